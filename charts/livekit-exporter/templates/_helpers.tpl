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
{{- with .Values.config.livekit }}
{{- if or .api_key .api_secret .api_secret_file }}
{{- fail "config.livekit: put no credentials in config (livekit.apiKey, livekit.apiSecret or existingSecret set them)" }}
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
