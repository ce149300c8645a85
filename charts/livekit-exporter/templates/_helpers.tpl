{{/* The chart name, the full name of every resource, and the labels. */}}
{{- define "livekit-exporter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "livekit-exporter.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "<fullname>-<suffix>", the full name cut so that the suffix survives the 63-character limit. */}}
{{- define "livekit-exporter.suffixed" -}}
{{- $base := include "livekit-exporter.fullname" .ctx | trunc (int (sub 62 (len .suffix))) | trimSuffix "-" }}
{{- printf "%s-%s" $base .suffix }}
{{- end }}

{{/* What the ServiceMonitor shares with the bundle's rules (files/bundle.json, generated from prometheus/mixin.yml). */}}
{{- define "livekit-exporter.bundle" -}}
{{- $b := .Files.Get "files/bundle.json" | fromJson }}
{{- if or (not $b) (hasKey $b "Error") }}
{{- fail "files/bundle.json: missing or not JSON (run `make rules`)" }}
{{- end }}
{{- toJson $b }}
{{- end }}

{{/* A Prometheus duration (15s, 1m, 1m30s, 500ms) in milliseconds; . is (list "the value's key" value). */}}
{{- define "livekit-exporter.durationMs" -}}
{{- $key := index . 0 }}
{{- $d := toString (index . 1) }}
{{- if not (regexMatch "^([0-9]+(ms|s|m|h|d|w|y))+$" $d) }}
{{- fail (printf "%s: %q is not a Prometheus duration (e.g. 15s, 1m, 1m30s)" $key $d) }}
{{- end }}
{{- $units := dict "ms" 1 "s" 1000 "m" 60000 "h" 3600000 "d" 86400000 "w" 604800000 "y" 31536000000 }}
{{- $ms := 0 }}
{{- range regexFindAll "[0-9]+(ms|s|m|h|d|w|y)" $d -1 }}
{{- $n := regexFind "^[0-9]+" . }}
{{- $ms = add $ms (mul (int64 $n) (get $units (trimPrefix $n .))) }}
{{- end }}
{{- $ms }}
{{- end }}

{{/* The container image: repository@digest, or repository:tag (default: the appVersion). */}}
{{- define "livekit-exporter.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{- define "livekit-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "livekit-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "livekit-exporter.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "livekit-exporter.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: livekit-exporter
{{- end }}

{{- define "livekit-exporter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "livekit-exporter.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret the pod reads: existingSecret, or the chart's own. */}}
{{- define "livekit-exporter.secretName" -}}
{{- default (include "livekit-exporter.fullname" .) .Values.existingSecret }}
{{- end }}

{{- define "livekit-exporter.secretDir" -}}/etc/livekit-exporter/secrets{{- end }}

{{/* "true" when the Secret holds the API key (env LIVEKIT_API_KEY) / the API secret (a file). */}}
{{- define "livekit-exporter.hasApiKey" -}}
{{- if or .Values.existingSecret .Values.livekit.apiKey }}true{{ end }}
{{- end }}
{{- define "livekit-exporter.hasApiSecret" -}}
{{- if or .Values.existingSecret .Values.livekit.apiSecret }}true{{ end }}
{{- end }}
{{- define "livekit-exporter.hasEventsTokens" -}}
{{- if .Values.existingSecret }}{{ if .Values.events.existingSecretTokens }}true{{ end }}
{{- else if .Values.events.tokens }}true{{ end }}
{{- end }}

{{/* Refuses values that cannot make a working exporter (a default install, with no URL, renders: NOTES.txt says what is missing). */}}
{{- define "livekit-exporter.validate" -}}
{{- if and .Values.livekit.url (not .Values.existingSecret) (not (and .Values.livekit.apiKey .Values.livekit.apiSecret)) }}
{{- fail "livekit.url is set but the LiveKit credentials are not: set livekit.apiKey and livekit.apiSecret, or existingSecret (a Secret with the keys api-key and api-secret)" }}
{{- end }}
{{- if and .Values.existingSecret (or .Values.livekit.apiKey .Values.livekit.apiSecret) }}
{{- fail "existingSecret is set: leave livekit.apiKey and livekit.apiSecret empty (the Secret's api-key and api-secret are used)" }}
{{- end }}
{{- if and .Values.events.existingSecretTokens (not .Values.existingSecret) }}
{{- fail "events.existingSecretTokens is set without existingSecret: give the tokens in events.tokens, or name the Secret in existingSecret" }}
{{- end }}
{{- if and .Values.existingSecret .Values.events.tokens }}
{{- fail "existingSecret is set: put the events tokens in its events-tokens key (and set events.existingSecretTokens) instead of events.tokens" }}
{{- end }}
{{- range $i, $k := .Values.webhooks.keys }}
{{- if and $.Values.existingSecret $k.apiSecret }}
{{- fail (printf "existingSecret is set: webhooks.keys[%d].apiSecret must be empty (the Secret's webhook-api-secret-%d is used)" $i $i) }}
{{- end }}
{{- if and (not $.Values.existingSecret) (not $k.apiSecret) }}
{{- fail (printf "webhooks.keys[%d] (%s) has no apiSecret" $i $k.apiKey) }}
{{- end }}
{{- end }}
{{- if (.Values.config.webhooks | default dict).keys }}
{{- fail "config.webhooks.keys: set webhooks.keys ([{apiKey, apiSecret}]) instead: the chart mounts their secrets as files" }}
{{- end }}
{{- if (.Values.config.events | default dict).tokens }}
{{- fail "config.events.tokens: set events.tokens instead (kept in the Secret, not in the ConfigMap)" }}
{{- end }}
{{- if (.Values.config.events | default dict).token_files }}
{{- fail "config.events.token_files: set events.tokens (or events.existingSecretTokens) instead: the chart mounts the tokens file" }}
{{- end }}
{{- with .Values.config.livekit }}
{{- if .url }}
{{- fail "config.livekit.url: set livekit.url instead" }}
{{- end }}
{{- if or .api_key .api_secret .api_secret_file }}
{{- fail "config.livekit: put no credentials in config (livekit.apiKey, livekit.apiSecret or existingSecret set them)" }}
{{- end }}
{{- end }}
{{- $chartFlags := dict "--config.file" "config" "--web.listen-address" "service.port (the container listens on :9784)" "--web.telemetry-path" "nothing (the chart scrapes /metrics)" "--web.config.file" "webConfig.existingSecret" }}
{{- range .Values.extraArgs }}
{{- $flag := regexReplaceAll "=.*$" (toString .) "" }}
{{- if hasKey $chartFlags $flag }}
{{- fail (printf "extraArgs: %s is set by the chart; use %s instead" $flag (get $chartFlags $flag)) }}
{{- end }}
{{- end }}
{{- $selector := include "livekit-exporter.selectorLabels" . | fromYaml }}
{{- range $k, $v := .Values.podLabels }}
{{- if hasKey $selector $k }}
{{- fail (printf "podLabels.%s: a selector label of the chart (%s) cannot be overridden" $k (get $selector $k)) }}
{{- end }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail (printf "autoscaling.minReplicas (%v) is greater than autoscaling.maxReplicas (%v)" .Values.autoscaling.minReplicas .Values.autoscaling.maxReplicas) }}
{{- end }}
{{- if and .Values.lifecycle.preStopSleepSeconds (ge (int .Values.lifecycle.preStopSleepSeconds) (int .Values.terminationGracePeriodSeconds)) }}
{{- fail (printf "lifecycle.preStopSleepSeconds (%v) must be shorter than terminationGracePeriodSeconds (%v): the sleep counts against the grace period" .Values.lifecycle.preStopSleepSeconds .Values.terminationGracePeriodSeconds) }}
{{- end }}
{{- if .Values.serviceMonitor.enabled }}
{{- $bundle := include "livekit-exporter.bundle" . | fromJson }}
{{- $interval := .Values.serviceMonitor.interval | default $bundle.interval }}
{{- $timeout := .Values.serviceMonitor.scrapeTimeout | default $bundle.scrapeTimeout }}
{{- $intervalMs := include "livekit-exporter.durationMs" (list "serviceMonitor.interval" $interval) | int64 }}
{{- $timeoutMs := include "livekit-exporter.durationMs" (list "serviceMonitor.scrapeTimeout" $timeout) | int64 }}
{{- if gt $timeoutMs $intervalMs }}
{{- fail (printf "serviceMonitor.scrapeTimeout (%s) is longer than serviceMonitor.interval (%s): prometheus-operator would refuse the ServiceMonitor" $timeout $interval) }}
{{- end }}
{{- end }}
{{- end }}

{{/* config.yml: .Values.config merged with the URL and the secret files' paths. */}}
{{- define "livekit-exporter.config" -}}
{{- $dir := include "livekit-exporter.secretDir" . }}
{{- $cfg := deepCopy (.Values.config | default dict) }}
{{- $lk := deepCopy (get $cfg "livekit" | default dict) }}
{{- if .Values.livekit.url }}{{ $_ := set $lk "url" .Values.livekit.url }}{{ end }}
{{- if include "livekit-exporter.hasApiSecret" . }}{{ $_ := set $lk "api_secret_file" (printf "%s/api-secret" $dir) }}{{ end }}
{{- if $lk }}{{ $_ := set $cfg "livekit" $lk }}{{ end }}
{{- if .Values.webhooks.keys }}
{{- $wh := deepCopy (get $cfg "webhooks" | default dict) }}
{{- $keys := list }}
{{- range $i, $k := .Values.webhooks.keys }}
{{- $keys = append $keys (dict "api_key" $k.apiKey "api_secret_file" (printf "%s/webhook-api-secret-%d" $dir $i)) }}
{{- end }}
{{- $_ := set $wh "keys" $keys }}
{{- $_ := set $cfg "webhooks" $wh }}
{{- end }}
{{- if include "livekit-exporter.hasEventsTokens" . }}
{{- $ev := deepCopy (get $cfg "events" | default dict) }}
{{- $_ := set $ev "token_files" (list (printf "%s/events-tokens" $dir)) }}
{{- $_ := set $cfg "events" $ev }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}
