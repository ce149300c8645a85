"""The recording and alerting rules, built from prometheus/mixin.yml.

Conventions (kubernetes-mixin's, and the Prometheus docs' on rules):
- recording rules are named level:metric:operations; the level lists the labels kept beyond
  aggregation.keep (cluster, namespace, job by default);
- every aggregation keeps aggregation.keep and drops the replica labels (instance, pod), so the
  rules read the same for one exporter or several behind one Service: event counters are summed
  across replicas (each event reaches one of them), gauges of LiveKit's state, which every
  replica reads alike, are taken with max (never summed);
- a ratio is absent, never NaN, when its denominator is zero, and its numerator defaults to 0
  (a counter nobody has incremented yet is no series at all);
- alert names start with LiveKit; each alert has severity, component, summary, a description with
  its value and what it is compared with, runbook_url and dashboard_url. A warning and a critical
  tier of one condition share the alert name, so Alertmanager's critical-mutes-warning
  inhibition matches them by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

from .config import MixinConfig, MixinError, config_seconds, seconds

VAL = "{{ $value | humanize }}"
PCT = "{{ $value | humanizePercentage }}"
DUR = "{{ $value | humanizeDuration }}"
RATE = '{{ printf "%.3g" $value }}'  # a rate per second: humanize would write 0.05 as "50m"


def lab(name: str) -> str:
    return f"{{{{ $labels.{name} }}}}"


def num(x: float) -> str:
    """A threshold as PromQL and docs show it: 2, 0.05, 14.4 (no float noise)."""
    return f"{x:.10g}"


def pct(x: float) -> str:
    return f"{x * 100:.10g}%"


_RE2_META = frozenset(r"\.+*?()|[]{}^$")


def string(text: str) -> str:
    """Text as the inside of a PromQL double-quoted string."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


def regex(values: list[str]) -> str:
    """An RE2 alternation matching exactly these label values, as the inside of a PromQL string."""
    return string("|".join("".join("\\" + c if c in _RE2_META else c for c in v) for v in values))


def words(values: list[str], last: str = "or") -> str:
    return values[0] if len(values) == 1 else f"{', '.join(values[:-1])} {last} {values[-1]}"


def le_matcher(bound: float) -> str:
    """Matches a bucket bound whichever client wrote it: Go writes 2 as "2", Python as "2.0"."""
    text = num(bound)
    return f'le=~"{text}(\\\\.0)?"' if "." not in text and "e" not in text else f'le="{text}"'


def qname(q: float) -> str:
    """0.95 -> p95, 0.5 -> p50, 0.999 -> p999 (a recording rule name has no dots)."""
    return "p" + num(q * 100).replace(".", "")


# The panel (dashboards.py's anchor) each alert's dashboard_url opens; a test checks each exists.
ALERT_PANELS = {
    "LiveKitExporterInstanceDown": "scrape-duration",
    "LiveKitExporterScrapesFailing": "scrape-duration",
    "LiveKitExporterScrapeSlow": "scrape-duration",
    "LiveKitExporterLabelOverflow": "label-overflow",
    "LiveKitExporterEventsUnauthorized": "events-refused",
    "LiveKitExporterEventsRejected": "events-refused",
    "LiveKitApiUnreachable": "api-up",
    "LiveKitApiServiceDown": "api-up",
    "LiveKitApiUnauthenticated": "api-errors",
    "LiveKitApiLatencyHigh": "api-latency",
    "LiveKitApiErrorRatioHigh": "api-error-ratio",
    "LiveKitWebhooksSilent": "webhook-events",
    "LiveKitWebhookDeliveryDelayHigh": "webhook-delay",
    "LiveKitWebhookKeyMismatch": "webhook-rejections",
    "LiveKitWebhookRejectionsFlood": "webhook-rejections",
    "LiveKitWebhookMalformed": "webhook-rejections",
    "LiveKitEgressFailureRatioHigh": "egress-success",
    "LiveKitEgressFailing": "egress-ended",
    "LiveKitIngressFailureRatioHigh": "ingress-failure",
    "LiveKitIngressFailing": "ingress-ended",
    "LiveKitSipCallFailureRatioHigh": "sip-calls",
    "LiveKitSipAnswerRatioLow": "sip-answer",
    "LiveKitVoiceAgentLatencyHigh": "v2v-latency",
    "LiveKitVoiceAgentStageLatencyHigh": "stage-p95",
    "LiveKitVoiceAgentErrorRatioHigh": "error-ratio",
    "LiveKitVoiceAgentCallSuccessRatioLow": "call-ratios",
    "LiveKitVoiceAgentCallsExpiring": "active-calls",
    "LiveKitVoiceAgentDependencyDown": "dependencies",
    "LiveKitVoiceAgentCampaignStalled": "campaign-running",
    "LiveKitVoiceAgentSpendHigh": "cost-per-day",
    "LiveKitSloErrorBudgetBurn": "burn-rate",
    "LiveKitConnectionQualityLow": "quality-marks",
    "LiveKitPacketLossHigh": "packet-loss",
    "LiveKitJitterHigh": "jitter",
    "LiveKitRttHigh": "rtt",
    "LiveKitAgentWorkerLoadHigh": "worker-load",
    "LiveKitAgentWorkersAbsent": "worker-jobs",
}

# The alerts alertmanager/alertmanager.yml inhibits others with (a test checks the two agree). They
# keep firing for inhibitors.keep_firing_for after their condition clears, so the symptoms they
# mute resolve first rather than being delivered on the way out.
INHIBITORS = ("LiveKitExporterDown", "LiveKitApiUnreachable", "LiveKitApiUnauthenticated")


@dataclass
class Tier:
    severity: str
    expr: str
    for_: str
    threshold: str  # what the docs show: "p95 > 2 s"
    keys: tuple[str, ...]  # the mixin.yml keys that change it
    description: str
    labels: dict[str, str] = field(default_factory=dict)
    keep_firing_for: str = ""  # set on the alerts Alertmanager inhibits others with


@dataclass
class Alert:
    name: str
    group: str
    component: str
    dashboard: str  # a key of links.dashboards
    summary: str
    tiers: list[Tier]
    meaning: str
    impact: str
    diagnosis: list[str]  # PromQL queries to run, in order (checked like the rules' own)
    fix: str
    panel: str = ""  # the anchor of the dashboard panel that shows it (dashboards.py), for viewPanel


@dataclass
class Record:
    record: str
    expr: str
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class Group:
    name: str
    rules: list[Record]
    interval: str | None = None


class Q:
    """PromQL building blocks bound to the configuration's jobs and kept labels."""

    def __init__(self, cfg: MixinConfig):
        self.keep = cfg["aggregation"].strings("keep")
        jobs = cfg["jobs"]
        self.jobs = {k: jobs[k] for k in ("exporter", "livekit_server", "agent_workers", "livekit_sip")}

    def by(self, *labels: str) -> str:
        return "by (" + ", ".join([*self.keep, *labels]) + ")"

    def on(self) -> str:
        return "on (" + ", ".join(self.keep) + ")"

    def m(self, metric: str, matchers: str = "", job: str = "exporter") -> str:
        sel = f'job="{string(self.jobs[job])}"'
        return f"{metric}{{{sel}{',' + matchers if matchers else ''}}}"

    def agg(self, op: str, metric: str, *labels: str, matchers: str = "", job: str = "exporter") -> str:
        return f"{op} {self.by(*labels)} ({self.m(metric, matchers, job)})"

    def rate(
        self,
        metric: str,
        window: str,
        *labels: str,
        matchers: str = "",
        job: str = "exporter",
        fn: str = "rate",
        offset: str = "",
    ) -> str:
        off = f" offset {offset}" if offset else ""
        return f"sum {self.by(*labels)} ({fn}({self.m(metric, matchers, job)}[{window}]{off}))"

    def quantile(
        self, q: float, bucket: str, window: str, *labels: str, matchers: str = "", job: str = "exporter"
    ) -> str:
        return f"histogram_quantile({num(q)}, {self.rate(bucket, window, *labels, 'le', matchers=matchers, job=job)})"

    def events(self, metric: str, window: str, *labels: str, matchers: str = "") -> str:
        """How much a counter went up over the window. A series born within the window (a counter
        created on its first increment) counts from zero, but only where its target was scraped
        a window ago already: a fresh Prometheus, which sees every series as new, stays quiet."""
        m = self.m(metric, matchers)
        return (
            f"sum {self.by(*labels)} ((increase({m}[{window}]) and {m} offset {window}) or "
            f"({m} unless {m} offset {window}) and on (job, instance) {self.m('up')} offset {window})"
        )

    def at_least(self, counter: str, window: str, *labels: str, n: float) -> str:
        """The counter went up by at least n over the window: a ratio of a handful of events is noise."""
        return f"{self.rate(counter, window, *labels, fn='increase')} >= {num(n)}"

    def only_failures(self, ended: str, window: str, label: str, failed: str, other: str, n: float) -> str:
        """At least n ends matching `failed` over the window and none matching `other`: an outage, not noise."""
        return (
            f"{self.events(ended, window, label, matchers=failed)} >= {num(n)} unless "
            f"{self.rate(ended, window, label, matchers=other, fn='increase')} > 0"
        )

    @staticmethod
    def ratio(numerator: str, denominator: str) -> str:
        """numerator / denominator, 0 when the numerator has no series, absent when the denominator is 0."""
        return f"({numerator} or 0 * {denominator}) / ({denominator} > 0)"


class Mixin:
    """Everything generated from one configuration: recording groups, alerts, prometheus.yml."""

    def __init__(self, cfg: MixinConfig):
        self.cfg = cfg
        self.q = Q(cfg)
        links = cfg["links"]
        self.runbook_base = links["runbook_base_url"]
        self.grafana = links["grafana_url"].rstrip("/")
        self.dashboards = dict(links["dashboards"].items())
        self.records: list[Group] = []
        self.alerts: list[Alert] = []
        self._build()

    # -- helpers -------------------------------------------------------------------------------------

    def dashboard_url(self, key: str, panel: str = "") -> str:
        url = f"{self.grafana}/d/{self.dashboards[key]}"
        if panel:
            from .dashboards import panel_ids

            url += f"?viewPanel={panel_ids(self)[key, panel]}"
        return url

    def runbook_url(self, name: str) -> str:
        return f"{self.runbook_base}#{name.lower()}"

    def _build(self) -> None:
        interval = seconds(self.cfg["prometheus"].duration("scrape_interval", positive=True))
        self.cfg._ctx["min_window"] = 2 * interval
        self._exporter()
        self._livekit_api()
        self._webhooks()
        self._media()
        self._telephony()
        self._voice_agents()
        self._campaigns()
        self._trends()
        self._slos()
        self._long_term()
        for section, build in (("livekit_server", self._livekit_server), ("agent_workers", self._agent_workers)):
            if self.cfg[section]["enabled"]:
                build()
            else:
                self.cfg[section].skip()
        keep = self.cfg["inhibitors"].duration("keep_firing_for")
        for a in self.alerts:
            a.panel = ALERT_PANELS.get(a.name, "")
            if a.name in INHIBITORS:
                for t in a.tiers:
                    t.keep_firing_for = keep
        self._check()

    def alert(
        self,
        name: str,
        summary: str,
        *tiers: Tier,
        group: str,
        component: str,
        dashboard: str,
        meaning: str,
        impact: str,
        diagnosis: list[str],
        fix: str,
    ) -> None:
        """Adds one alert. Each section binds its group, component and dashboard once
        (`alert = partial(self.alert, group=..., component=..., dashboard=...)`); an alert of another
        component or dashboard names its own."""
        self.alerts.append(
            Alert(name, group, component, dashboard, summary, list(tiers), meaning, impact, diagnosis, fix)
        )

    def two_tiers(self, node, key: str, make, read=None, extra_keys: tuple[str, ...] = ()) -> list[Tier]:
        """The warning and critical tiers of one condition: make(limit) -> (expr, threshold text, description)."""
        out = []
        for sev in ("warning", "critical"):
            expr, threshold, description = make((read or node.number)(sev))
            out.append(Tier(sev, expr, node.duration("for"), threshold, (f"{key}.{sev}", *extra_keys), description))
        return out

    def ordered(self, node, worse: str) -> None:
        """The critical tier is beyond the warning one ("higher" or "lower" is worse)."""
        w, c = node.number("warning"), node.number("critical")
        if (w >= c) if worse == "higher" else (w <= c):
            raise MixinError(
                f"{self.cfg.source}: {node._path}: the critical threshold ({num(c)}) must be "
                f"{'above' if worse == 'higher' else 'below'} the warning one ({num(w)})"
            )

    def _check(self) -> None:
        for key, worse in (
            ("livekit_api.latency", "higher"),
            ("livekit_api.error_ratio", "higher"),
            ("voice_agents.latency", "higher"),
            ("voice_agents.error_ratio", "higher"),
            ("voice_agents.call_success", "lower"),
            ("livekit_server.quality", "lower"),
        ):
            section, sub = key.split(".")
            if section == "livekit_server" and not self.cfg[section]["enabled"]:
                continue
            self.ordered(self.cfg[section][sub], worse)
        names = [a.name for a in self.alerts]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise MixinError(f"alert names defined twice: {', '.join(sorted(dupes))}")
        for a in self.alerts:
            if a.dashboard not in self.dashboards:
                raise MixinError(f"{a.name}: no dashboard uid for {a.dashboard!r} in links.dashboards")

    def group(self, name: str, rules: list[Record], interval: str | None = None) -> None:
        self.records.append(Group(name, rules, interval))

    # -- the exporter itself ---------------------------------------------------------------------------

    def _exporter(self) -> None:
        c, q = self.cfg["exporter"], self.q
        job = q.jobs["exporter"]
        up = q.m("up")
        seen = c.window("down_seen_within")
        alert = partial(self.alert, group="livekit-exporter.alerts", component="exporter", dashboard="exporter")
        alert(
            "LiveKitExporterDown",
            "No livekit-exporter target answers Prometheus.",
            Tier(
                "critical",
                f"max {q.by()} ({up}) == 0 or group {q.by()} (max_over_time({up}[{seen}])) "
                f"unless group {q.by()} ({up}) or absent({up})",
                c.duration("down_for"),
                f"every target down, gone (seen within {seen}), or none discovered",
                ("exporter.down_for", "exporter.down_seen_within"),
                f'Prometheus has not scraped any target of job "{job}" for {c["down_for"]}: no LiveKit, '
                "webhook or voice-agent metric is being collected.",
            ),
            meaning=f'Every target of the job "{job}" fails its scrape (up == 0), or its targets vanished from '
            "service discovery (per cluster and namespace), or Prometheus discovers none at all.",
            impact="Nothing about LiveKit or the voice agents is collected; every other alert of this bundle "
            "goes blind (and is inhibited while this one fires). Webhooks and agent events sent meanwhile are lost.",
            diagnosis=[f'up{{job="{job}"}}', f'scrape_duration_seconds{{job="{job}"}}'],
            fix="Check that the exporter runs (`/-/healthy`), that Prometheus reaches its address (Status > "
            "Targets shows the scrape error), and that the job name matches jobs.exporter in mixin.yml.",
        )
        alert(
            "LiveKitExporterInstanceDown",
            "A livekit-exporter replica is down.",
            Tier(
                "warning",
                f"{up} == 0",
                c.duration("instance_down_for"),
                "up == 0",
                ("exporter.instance_down_for",),
                f"The exporter at {lab('instance')} has failed every scrape for {c['instance_down_for']}.",
            ),
            meaning="One exporter target fails its scrapes while others (if any) still answer.",
            impact="Webhooks and agent events routed to this replica are lost; with one replica, see LiveKitExporterDown.",
            diagnosis=[f'up{{job="{job}"}} == 0', f'scrape_duration_seconds{{job="{job}"}}'],
            fix="Look at the replica's logs and restarts (OOM, crash loop), and at Prometheus' Targets page for "
            "the scrape error (refused, timeout, TLS, 401 from --web.config.file).",
        )
        sf = c["scrape_failures"]
        w, r = sf.window(), sf.ratio("max_failed_ratio")
        alert(
            "LiveKitExporterScrapesFailing",
            "Scrapes of a livekit-exporter replica fail intermittently.",
            Tier(
                "warning",
                f"1 - avg_over_time({up}[{w}]) > {num(r)} and max_over_time({up}[{w}]) == 1",
                sf.duration("for"),
                f"> {pct(r)} of scrapes failed over {w}",
                ("exporter.scrape_failures.max_failed_ratio", "exporter.scrape_failures.window"),
                f"{PCT} of the scrapes of {lab('instance')} failed over the last {w} (more than {pct(r)}).",
            ),
            meaning="Some scrapes fail while others succeed: the target flaps.",
            impact="Gaps in every graph; counters survive, but rates over short windows read low or missing.",
            diagnosis=[f'avg_over_time(up{{job="{job}"}}[{w}])', f'scrape_duration_seconds{{job="{job}"}}'],
            fix="Usually timeouts: compare scrape_duration_seconds with the scrape_timeout; see "
            "LiveKitExporterScrapeSlow. Otherwise restarts of the replica or network drops.",
        )
        ss = c["scrape_slow"]
        timeout = self.cfg["prometheus"].duration("scrape_timeout")
        limit = ss.ratio("timeout_ratio") * seconds(timeout)
        w = ss.window()
        alert(
            "LiveKitExporterScrapeSlow",
            "Scrapes of livekit-exporter come close to the scrape timeout.",
            Tier(
                "warning",
                f"max_over_time({q.m('scrape_duration_seconds')}[{w}]) > {num(limit)}",
                ss.duration("for"),
                f"scrape > {num(ss['timeout_ratio'])} x scrape_timeout ({num(limit)} s)",
                ("exporter.scrape_slow.timeout_ratio", "prometheus.scrape_timeout"),
                f"The slowest scrape of {lab('instance')} over {w} took {DUR}, more than "
                f"{num(ss['timeout_ratio'])} x the {timeout} scrape timeout.",
            ),
            meaning="The exporter spends most of the scrape timeout reading LiveKit's API.",
            impact="A little slower and scrapes time out (up == 0). The exporter already cuts LiveKit calls "
            "at the timeout, so services read as down instead of the whole scrape failing.",
            diagnosis=[
                f'max_over_time(scrape_duration_seconds{{job="{job}"}}[{w}])',
                f'livekit_exporter_scrape_duration_seconds{{job="{job}"}}',
                f"service:livekit_api_request_duration_seconds:{qname(self.cfg['livekit_api']['latency'].number('quantile'))}_{self.cfg['livekit_api']['latency'].duration('window')}",
            ],
            fix="Find the slow LiveKit service in the latency query; reduce collect.room_detail.max_rooms or "
            "raise its concurrency; raise scrape_timeout (mixin.yml prometheus.scrape_timeout) if LiveKit is slow by nature.",
        )
        lo = c["label_overflow"]
        w = lo.window()
        alert(
            "LiveKitExporterLabelOverflow",
            "The exporter's cardinality guard folds label values into __other__.",
            Tier(
                "warning",
                f"{q.events('livekit_exporter_label_overflow_total', w, 'metric', 'label')} > 0",
                lo.duration("for"),
                "any value folded",
                ("exporter.label_overflow.window",),
                f"{VAL} values of label {lab('label')} of {lab('metric')} were folded into __other__ over {w}.",
            ),
            meaning="More distinct values of a user-named label arrived than labels.max_values admits, or more "
            "label combinations of a metric than labels.max_series_per_metric (or, over all of them, labels.max_series) holds.",
            impact="Those values are summed into __other__: per-agent, per-model or per-trunk numbers hide part of the traffic.",
            diagnosis=[f'sum by (metric, label) (increase(livekit_exporter_label_overflow_total{{job="{job}"}}[1h]))'],
            fix="If the values are legitimate (more agents or models than before), raise labels.max_values (or the "
            "series budgets, if the values are within it: the exporter's memory and scrape time grow with them) in the "
            "exporter's configuration; if they are not (ids, phone numbers, free text), fix the sender.",
        )
        eu = c["events_unauthorized"]
        w = eu.window()
        alert(
            "LiveKitExporterEventsUnauthorized",
            "Voice agents push events with a token the exporter does not accept.",
            Tier(
                "warning",
                q.rate("livekit_exporter_event_requests_rejected_total", w, matchers='reason="unauthorized"') + " > 0",
                eu.duration("for"),
                "any 401 on /v1/events",
                ("exporter.events_unauthorized.window",),
                f"/v1/events refused {RATE} requests per second with 401 over {w}.",
            ),
            meaning="Requests to POST /v1/events carry no bearer token or one not in events.tokens.",
            impact="Every event of those agents is lost: calls, turns, latency and cost are missing for them.",
            diagnosis=[
                f'sum by (reason) (rate(livekit_exporter_event_requests_rejected_total{{job="{job}"}}[{w}]))',
                f'sum by (type) (rate(livekit_exporter_events_total{{job="{job}"}}[{w}]))',
            ],
            fix="Compare LIVEKIT_EXPORTER_EVENTS_TOKEN of the agents with events.tokens / token_files of the "
            "exporter (rotate by listing both tokens). The exporter's log names the remote address, never the token.",
        )
        er = c["events_rejected"]
        w = er.window()
        alert(
            "LiveKitExporterEventsRejected",
            "The events API refuses batches of voice-agent events.",
            Tier(
                "warning",
                q.events(
                    "livekit_exporter_event_requests_rejected_total",
                    w,
                    "reason",
                    matchers='reason!="unauthorized"',
                )
                + " > 0",
                er.duration("for"),
                "any request refused (other than 401)",
                ("exporter.events_rejected.window",),
                f"/v1/events refused {VAL} requests over {w} with reason {lab('reason')}.",
            ),
            meaning="Batches are refused whole: invalid events, malformed JSON, an object that repeats a key "
            "(duplicate_key), too large, over the token's events.rate_limit (rate_limited), or an Idempotency-Key "
            "reused for another body.",
            impact="None of a refused batch's events are applied: the voice-agent metrics undercount.",
            diagnosis=[
                f'sum by (reason) (increase(livekit_exporter_event_requests_rejected_total{{job="{job}"}}[{w}]))'
            ],
            fix="The 400 answer lists the bad events with their index and JSON path, and the exporter logs it "
            "(rate-limited): fix the sender, or upgrade it to the events schema the exporter serves. "
            "rate_limited: the sender pushes more requests a second than events.rate_limit allows; batch more "
            "events per request (the push client does) or raise the limit.",
        )
        td = c["timings_discarded"]
        w = td.window()
        alert(
            "LiveKitExporterTimingsDiscarded",
            "Turn-stage timings above events.max_latency are being discarded.",
            Tier(
                "info",
                f"{q.events('livekit_exporter_event_latencies_discarded_total', w, 'type', 'field')} > 0",
                td.duration("for"),
                "any timing discarded",
                ("exporter.timings_discarded.window",),
                f"{VAL} {lab('type')}.{lab('field')} timings over events.max_latency were discarded over {w}.",
            ),
            dashboard="voice_agents",
            meaning="Agents reported stage latencies above events.max_latency (30 s by default); they are counted, not observed.",
            impact="None on the latency histograms (that is the point); frequent ones point at a timestamp bug in the agent.",
            diagnosis=[
                f'sum by (type, field) (increase(livekit_exporter_event_latencies_discarded_total{{job="{job}"}}[1h]))'
            ],
            fix="Upgrade livekit-agents (it has shipped end-of-turn and transcription delay bugs of 60-200 s), "
            "or raise events.max_latency if such timings are real.",
        )
        rd = c["room_detail_capped"]
        alert(
            "LiveKitExporterRoomDetailCapped",
            "Per-room detail skips rooms above collect.room_detail.max_rooms.",
            Tier(
                "info",
                q.agg("max", "livekit_exporter_room_detail_rooms", matchers='result="skipped"') + " > 0",
                rd.duration("for"),
                "rooms skipped > 0",
                ("exporter.room_detail_capped.for",),
                f"{VAL} rooms were skipped by the per-room detail cap in the last scrape.",
            ),
            meaning="More rooms are open than collect.room_detail.max_rooms: only the fullest are read for detail.",
            impact="livekit_participants, livekit_published_tracks, livekit_sip_calls and livekit_agent_jobs cover part of the rooms.",
            diagnosis=[f'livekit_exporter_room_detail_rooms{{job="{job}"}}'],
            fix="Raise collect.room_detail.max_rooms (each room costs up to two API calls a scrape), or accept the sample.",
        )

    # -- the LiveKit API -------------------------------------------------------------------------------

    def _livekit_api(self) -> None:
        c, q = self.cfg["livekit_api"], self.q
        job = q.jobs["exporter"]
        lat, er, auth = c["latency"], c["error_ratio"], c["auth_errors"]
        lw, ew = lat.window(), er.window()
        lq = lat.number("quantile", low=0, high=1)
        p = f"service:livekit_api_request_duration_seconds:{qname(lq)}_{lw}"
        requests = f"service:livekit_api_requests:rate{ew}"
        errors = f"service:livekit_api_errors:rate{ew}"
        ratio = f"service:livekit_api_errors:ratio_rate{ew}"
        self.group(
            "livekit-api.rules",
            [
                Record("service:livekit_api_up:max", q.agg("max", "livekit_api_up", "service")),
                Record(requests, q.rate("livekit_api_request_duration_seconds_count", ew, "service")),
                Record(errors, q.rate("livekit_api_errors_total", ew, "service")),
                Record(ratio, q.ratio(errors, requests)),
                Record(
                    f"service_le:livekit_api_request_duration_seconds_bucket:rate{lw}",
                    q.rate("livekit_api_request_duration_seconds_bucket", lw, "service", "le"),
                ),
                Record(
                    p, f"histogram_quantile({num(lq)}, service_le:livekit_api_request_duration_seconds_bucket:rate{lw})"
                ),
            ],
        )
        alert = partial(self.alert, group="livekit-api.alerts", component="livekit", dashboard="overview")
        codes = regex(auth.strings("codes"))
        aw = auth.window()
        auth_rate = q.rate("livekit_api_errors_total", aw, matchers=f'code=~"{codes}"')
        alert(
            "LiveKitApiUnreachable",
            "No LiveKit API service answers the exporter.",
            Tier(
                "critical",
                f"{q.agg('max', 'livekit_api_up')} == 0 unless {auth_rate} > 0",
                c.duration("unreachable_for"),
                "every service down, not for credentials",
                ("livekit_api.unreachable_for",),
                "No LiveKit API service has answered the exporter for "
                f"{c['unreachable_for']}: LiveKit is down or unreachable from the exporter.",
            ),
            meaning="Every enabled LiveKit API service failed this scrape, and not with an authentication error.",
            impact="Rooms, egress, ingress and SIP state are unknown; LiveKit itself is probably down for users too. "
            "Alerts that depend on LiveKit are inhibited while this fires.",
            diagnosis=[
                f'livekit_api_up{{job="{job}"}}',
                f'sum by (service, code) (rate(livekit_api_errors_total{{job="{job}"}}[5m]))',
            ],
            fix='code="connection" or "tls": check livekit.url, DNS, the network path and the certificate '
            '(livekit.tls_ca_file); code="timeout": LiveKit is overloaded or hangs; 5xx codes: LiveKit\'s own logs.',
        )
        alert(
            "LiveKitApiServiceDown",
            "A LiveKit API service does not answer the exporter.",
            Tier(
                "critical",
                f"{q.agg('max', 'livekit_api_up', 'service')} == 0",
                c.duration("service_down_for"),
                "livekit_api_up == 0",
                ("livekit_api.service_down_for",),
                f"The LiveKit {lab('service')} service has failed every scrape for {c['service_down_for']}.",
            ),
            meaning="The service's calls fail or time out on every scrape, from every exporter replica.",
            impact="Its metrics (rooms, egress, ingress or SIP) are left out of /metrics; the operation it serves may be down for users.",
            diagnosis=[
                f'livekit_api_up{{job="{job}"}}',
                f'sum by (service, method, code) (rate(livekit_api_errors_total{{job="{job}"}}[5m]))',
            ],
            fix="Egress and SIP depend on Redis and their own services in open-source LiveKit: check that they run. "
            '"unimplemented": take the service out of collect.services.',
        )
        alert(
            "LiveKitApiUnauthenticated",
            "LiveKit refuses the exporter's credentials or grants.",
            Tier(
                "critical",
                q.rate("livekit_api_errors_total", aw, "service", matchers=f'code=~"{codes}"') + " > 0",
                auth.duration("for"),
                f"any {', '.join(auth['codes'])} error",
                ("livekit_api.auth_errors.codes", "livekit_api.auth_errors.window"),
                f"LiveKit answers the exporter's {lab('service')} calls with {words(auth['codes'])} "
                f"({RATE} per second over {aw}).",
            ),
            meaning="The API key or secret is wrong, or the key lacks a grant the call needs.",
            impact="The service's numbers are missing until the credentials are fixed; service-down and error-ratio "
            "alerts of the same service are inhibited, since they need this fix.",
            diagnosis=[
                f'sum by (service, method, code) (rate(livekit_api_errors_total{{job="{job}",code=~"{codes}"}}[5m]))'
            ],
            fix="If every service fails: the key pair (livekit.api_key / api_secret, LIVEKIT_API_KEY / "
            "LIVEKIT_API_SECRET) does not match LiveKit's keys. If one fails: add its grant (roomList, roomAdmin, "
            'roomRecord, ingressAdmin, SIP admin). The exporter\'s log says "permissions denied" for a grant.',
        )
        alert(
            "LiveKitApiLatencyHigh",
            "LiveKit's API answers the exporter slowly.",
            *self.two_tiers(
                lat,
                "livekit_api.latency",
                lambda x: (
                    f"{p} > {num(x)}",
                    f"p{num(lq * 100)} > {num(x)} s",
                    f"p{num(lq * 100)} latency of LiveKit's {lab('service')} API is {DUR} over {lw}, above {num(x)} s.",
                ),
            ),
            meaning="The exporter's calls to the service are slow (failed calls included).",
            impact="Slow scrapes, and the same slowness for every client of LiveKit's API (token servers, dispatchers).",
            diagnosis=[
                p,
                f'histogram_quantile(0.95, sum by (service, method, le) (rate(livekit_api_request_duration_seconds_bucket{{job="{job}"}}[5m])))',
            ],
            fix="Find the method in the second query. ListRooms and ListParticipants grow with the number of rooms; "
            "ListEgress needs Redis. Check LiveKit's CPU and Redis latency.",
        )
        alert(
            "LiveKitApiErrorRatioHigh",
            "Too many of the exporter's LiveKit API calls fail.",
            *self.two_tiers(
                er,
                "livekit_api.error_ratio",
                lambda x: (
                    f"{ratio} > {num(x)}",
                    f"> {pct(x)} of calls",
                    f"{PCT} of the calls to LiveKit's {lab('service')} API failed over {ew}, above {pct(x)}.",
                ),
                read=er.ratio,
            ),
            meaning="A share of the service's calls fail (any Twirp code, timeout or connection error).",
            impact="Scrapes read the service as down part of the time: gaps in its metrics.",
            diagnosis=[ratio, f'sum by (service, code) (rate(livekit_api_errors_total{{job="{job}"}}[5m]))'],
            fix="The code says where: resource_exhausted (rate limited: scrape less often), unavailable or "
            "internal (LiveKit's logs), timeout (see LiveKitApiLatencyHigh).",
        )

    # -- webhooks --------------------------------------------------------------------------------------

    def _webhooks(self) -> None:
        c, q = self.cfg["webhooks"], self.q
        job = q.jobs["exporter"]
        alert = partial(self.alert, group="livekit-webhooks.alerts", component="webhooks", dashboard="overview")
        s = c["silent"]
        w = s.window()
        events = q.rate("livekit_webhook_events_total", w, fn="increase")
        occupied = q.agg("max", "livekit_rooms", matchers='occupancy="occupied"')
        alert(
            "LiveKitWebhooksSilent",
            "No LiveKit webhook arrives while LiveKit lists occupied rooms.",
            Tier(
                "warning",
                f"({events} or 0 * {occupied}) == 0 and {occupied} > 0",
                s.duration("for"),
                f"no webhook over {w}, occupied rooms > 0",
                ("webhooks.silent.window", "webhooks.silent.for"),
                f"No webhook was accepted over {w} while LiveKit lists occupied rooms.",
            ),
            meaning="LiveKit has people in rooms but sends no webhook the exporter accepts.",
            impact="Room, participant, track, egress, ingress and SIP counters and durations stop; the state gauges still work.",
            diagnosis=[
                f'sum by (event) (increase(livekit_webhook_events_total{{job="{job}"}}[1h]))',
                f'sum by (reason) (increase(livekit_webhook_rejected_total{{job="{job}"}}[1h]))',
                f'livekit_rooms{{job="{job}"}}',
            ],
            fix="Check LiveKit's config.yaml `webhook.urls` points at the exporter's /webhook and that LiveKit "
            "reaches it (LiveKit logs failed deliveries). Rejections point at LiveKitWebhookKeyMismatch.",
        )
        d = c["delivery_delay"]
        w, dq = d.window(), d.number("quantile", low=0, high=1)
        delay = q.quantile(dq, "livekit_webhook_delivery_delay_seconds_bucket", w)
        alert(
            "LiveKitWebhookDeliveryDelayHigh",
            "LiveKit's webhooks arrive late.",
            Tier(
                "warning",
                f"{delay} > {num(d.number('threshold'))}",
                d.duration("for"),
                f"p{num(dq * 100)} > {num(d['threshold'])} s",
                ("webhooks.delivery_delay.threshold",),
                f"p{num(dq * 100)} webhook delivery delay is {DUR} over {w}, above {num(d['threshold'])} s.",
            ),
            meaning="Events reach the exporter long after LiveKit created them (LiveKit's created_at, whole seconds).",
            impact="LiveKit drops queued webhooks older than 30 s: delays near that lose events.",
            diagnosis=[
                f'histogram_quantile(0.95, sum by (event, le) (rate(livekit_webhook_delivery_delay_seconds_bucket{{job="{job}"}}[10m])))'
            ],
            fix="A slow exporter (CPU) or network, or LiveKit retrying (the exporter answered 5xx or timed out). "
            "Check the clocks too: the delay is the exporter's clock minus LiveKit's.",
        )
        k = c["key_mismatch"]
        w = k.window()
        reasons = regex(k.strings("reasons"))
        alert(
            "LiveKitWebhookKeyMismatch",
            "LiveKit signs its webhooks with a key the exporter does not have.",
            Tier(
                "warning",
                q.rate("livekit_webhook_rejected_total", w, "instance", matchers=f'reason=~"{reasons}"') + " > 0 "
                f"unless {q.rate('livekit_webhook_events_total', w, 'instance')} > 0",
                k.duration("for"),
                f"{', '.join(k['reasons'])} rejections, no event accepted",
                ("webhooks.key_mismatch.reasons",),
                f"Webhooks reaching {lab('instance')} are rejected for their signature or key ({RATE} per second over {w}) "
                "and none is accepted there.",
            ),
            meaning="Every signed webhook a replica receives fails verification: LiveKit's webhook key pair is not "
            "among that replica's webhooks.keys (by default the livekit API key pair). Per replica, since one "
            "misconfigured replica behind a Service loses its share of the webhooks while the others accept theirs.",
            impact="All webhook metrics are lost until the keys match.",
            diagnosis=[f'sum by (reason) (rate(livekit_webhook_rejected_total{{job="{job}"}}[{w}]))'],
            fix="Set webhooks.keys to LiveKit's `webhook.api_key` and its secret; during a rotation list both pairs.",
        )
        f = c["rejections_flood"]
        w, limit = f.window(), f.number("rate", low=0)
        alert(
            "LiveKitWebhookRejectionsFlood",
            "Many forged or replayed requests reach the webhook endpoint.",
            Tier(
                "warning",
                f"{q.rate('livekit_webhook_rejected_total', w, 'reason')} > {num(limit)} "
                f"and {q.on()} {q.rate('livekit_webhook_events_total', w)} > 0",
                f.duration("for"),
                f"> {num(limit)} rejections per second while LiveKit's own are accepted",
                ("webhooks.rejections_flood.rate",),
                f"{RATE} webhook requests per second are rejected with reason {lab('reason')} over {w}, "
                f"above {num(limit)}, while LiveKit's own deliveries are accepted.",
            ),
            meaning="LiveKit's real webhooks verify (so the key is right), but other requests are refused at a high rate.",
            impact="None on the numbers (a rejected request changes nothing); the endpoint spends CPU and logs.",
            diagnosis=[f'sum by (reason) (rate(livekit_webhook_rejected_total{{job="{job}"}}[{w}]))'],
            fix="Expose only /webhook and /v1/events, and only to LiveKit and the agents (firewall, ingress rules); "
            "the rate-limited log lines give the remote addresses.",
        )
        mal = c["malformed"]
        w = mal.window()
        alert(
            "LiveKitWebhookMalformed",
            "Signed webhooks cannot be decoded.",
            Tier(
                "warning",
                q.rate("livekit_webhook_rejected_total", w, matchers='reason="malformed"', fn="increase") + " > 0",
                mal.duration("for"),
                "any malformed signed body",
                ("webhooks.malformed.window",),
                f"{VAL} validly signed webhooks over {w} were not webhook events the exporter can read.",
            ),
            meaning="A body passed the signature and hash checks but is not a LiveKit webhook event this version reads.",
            impact="Those events are lost (answered 400, so LiveKit does not retry them).",
            diagnosis=[f'increase(livekit_webhook_rejected_total{{job="{job}",reason="malformed"}}[1h])'],
            fix="The log line names the field. A newer LiveKit may send a shape this exporter predates: upgrade the exporter.",
        )

    # -- egress and ingress ---------------------------------------------------------------------------

    def _media(self) -> None:
        c, q = self.cfg["media"], self.q
        job = q.jobs["exporter"]
        alert = partial(self.alert, group="livekit-media.alerts", component="media", dashboard="media")
        failed = regex(c.strings("egress_failed_statuses"))
        efr, ef = c["egress_failure_ratio"], c["egress_failing"]
        w = efr.window()
        ended = q.rate("livekit_egress_ended_total", w, "type")
        success = f"type:livekit_egress_success:ratio_rate{w}"
        iw = c["ingress_failure_ratio"].window()
        iended = q.rate("livekit_ingress_ended_total", iw, "input_type")
        ifail = f"input_type:livekit_ingress_failure:ratio_rate{iw}"
        self.group(
            "livekit-media.rules",
            [
                Record(
                    success,
                    "1 - "
                    + q.ratio(q.rate("livekit_egress_ended_total", w, "type", matchers=f'status=~"{failed}"'), ended),
                ),
                Record(
                    ifail,
                    q.ratio(q.rate("livekit_ingress_ended_total", iw, "input_type", matchers='status="error"'), iended),
                ),
                Record("occupancy:livekit_rooms:max", q.agg("max", "livekit_rooms", "occupancy")),
            ],
        )
        alert(
            "LiveKitEgressFailureRatioHigh",
            "Too many egress jobs fail.",
            Tier(
                "warning",
                f"(1 - {success}) > {num(efr['threshold'])} and "
                f"{q.at_least('livekit_egress_ended_total', w, 'type', n=efr['min_ended'])}",
                efr.duration("for"),
                f"> {pct(efr['threshold'])} failed (of at least {num(efr['min_ended'])} ended)",
                ("media.egress_failure_ratio.threshold", "media.egress_failed_statuses"),
                f"{PCT} of {lab('type')} egress ended as {words(c['egress_failed_statuses'])} over {w}, above {pct(efr['threshold'])}.",
            ),
            meaning=f"A share of the egress jobs of a type (recordings, streams) end with status {words(c['egress_failed_statuses'])}.",
            impact="Recordings or live streams are missing for users.",
            diagnosis=[
                f'sum by (type, status) (increase(livekit_egress_ended_total{{job="{job}"}}[1h]))',
                f'livekit_egress_active{{job="{job}"}}',
            ],
            fix="EgressInfo.error in LiveKit's egress logs says why: storage credentials, a full disk, an unreachable "
            "RTMP target, or egress workers out of CPU.",
        )
        w = ef.window()
        alert(
            "LiveKitEgressFailing",
            "Egress jobs fail and none succeeds.",
            Tier(
                "critical",
                q.only_failures(
                    "livekit_egress_ended_total",
                    w,
                    "type",
                    f'status=~"{failed}"',
                    f'status!~"{failed}"',
                    ef.number("min_failed", low=1),
                ),
                ef.duration("for"),
                f"at least {num(ef['min_failed'])} failures and no success over {w}",
                ("media.egress_failing.window", "media.egress_failing.min_failed"),
                f"{VAL} {lab('type')} egress failed over {w} and not one ended well.",
            ),
            meaning="Every egress of the type that ended in the window failed.",
            impact="No recording or stream of that type works: an outage of egress, not noise.",
            diagnosis=[f'sum by (type, status) (increase(livekit_egress_ended_total{{job="{job}"}}[{w}]))'],
            fix="Check that egress workers run and register with LiveKit (Redis), their storage upload credentials, and their logs.",
        )
        ifr, inf = c["ingress_failure_ratio"], c["ingress_failing"]
        alert(
            "LiveKitIngressFailureRatioHigh",
            "Too many ingress sessions end in error.",
            Tier(
                "warning",
                f"{ifail} > {num(ifr.ratio('threshold'))} and "
                f"{q.at_least('livekit_ingress_ended_total', iw, 'input_type', n=ifr.number('min_ended', low=0))}",
                ifr.duration("for"),
                f"> {pct(ifr['threshold'])} in error (of at least {num(ifr['min_ended'])} ended)",
                ("media.ingress_failure_ratio.threshold",),
                f"{PCT} of {lab('input_type')} ingress ended in error over {iw}, above {pct(ifr['threshold'])}.",
            ),
            meaning="A share of ingress state changes into an end are errors, by input type (rtmp, whip, url).",
            impact="Streams pushed into rooms drop for their publishers' audience.",
            diagnosis=[
                f'sum by (input_type, status) (increase(livekit_ingress_ended_total{{job="{job}"}}[1h]))',
                f'livekit_ingress{{job="{job}"}}',
            ],
            fix="IngressState.error in LiveKit's ingress logs: codecs the ingress cannot transcode, a publisher's "
            "unstable network, or ingress workers out of CPU.",
        )
        w = inf.window()
        alert(
            "LiveKitIngressFailing",
            "Ingress sessions fail and none starts publishing.",
            Tier(
                "critical",
                q.only_failures(
                    "livekit_ingress_ended_total",
                    w,
                    "input_type",
                    'status="error"',
                    'status!="error"',
                    inf.number("min_failed", low=1),
                ),
                inf.duration("for"),
                f"at least {num(inf['min_failed'])} errors and no other end over {w}",
                ("media.ingress_failing.window", "media.ingress_failing.min_failed"),
                f"{VAL} {lab('input_type')} ingress ended in error over {w} and none ended otherwise.",
            ),
            meaning="Every ingress of the input type that ended in the window ended in error (a crash loop included: "
            "sessions that start publishing and then fail).",
            impact="Nobody can push a stream of that type into LiveKit.",
            diagnosis=[f'sum by (input_type, status) (increase(livekit_ingress_ended_total{{job="{job}"}}[{w}]))'],
            fix="Check that ingress workers run and register with LiveKit, and the ports they listen on (RTMP 1935, WHIP).",
        )

    # -- SIP ---------------------------------------------------------------------------------------------

    def _telephony(self) -> None:
        c, q = self.cfg["telephony"], self.q
        job = q.jobs["exporter"]
        alert = partial(self.alert, group="livekit-telephony.alerts", component="telephony", dashboard="media")
        fr, ar = c["sip_failure_ratio"], c["sip_answer_ratio"]
        fw, aw = fr.window(), ar.window()
        failures = regex(c.strings("sip_failure_reasons"))
        unanswered = regex(c.strings("sip_unanswered_reasons"))
        fail_ratio = f"trunk:livekit_sip_calls_failure:ratio_rate{fw}"
        answer_ratio = f"trunk:livekit_sip_calls_answer:ratio_rate{aw}"
        self.group(
            "livekit-telephony.rules",
            [
                Record(
                    fail_ratio,
                    "clamp_max("
                    + q.ratio(
                        q.rate("livekit_sip_calls_ended_total", fw, "trunk", matchers=f'reason=~"{failures}"'),
                        q.rate("livekit_sip_calls_started_total", fw, "trunk"),
                    )
                    + ", 1)",
                ),
                Record(
                    answer_ratio,
                    "clamp_min(1 - "
                    + q.ratio(
                        q.rate("livekit_sip_calls_ended_total", aw, "trunk", matchers=f'reason=~"{unanswered}"'),
                        q.rate("livekit_sip_calls_started_total", aw, "trunk"),
                    )
                    + ", 0)",
                ),
            ],
        )
        alert(
            "LiveKitSipCallFailureRatioHigh",
            "Too many SIP calls of a trunk fail.",
            Tier(
                "warning",
                f"{fail_ratio} > {num(fr.ratio('threshold'))} and {q.at_least('livekit_sip_calls_started_total', fw, 'trunk', n=fr.number('min_calls', low=0))}",
                fr.duration("for"),
                f"> {pct(fr['threshold'])} failed (of at least {num(fr['min_calls'])})",
                ("telephony.sip_failure_ratio.threshold", "telephony.sip_failure_reasons"),
                f"{PCT} of the SIP calls of trunk {lab('trunk')} ended with a failure over {fw}, above {pct(fr['threshold'])}.",
            ),
            meaning=f"Calls end with a failure reason ({words(c['sip_failure_reasons'], 'and')}) rather than a hang-up.",
            impact="Callers are cut off or never reach the agent.",
            diagnosis=[
                f'sum by (trunk, reason) (increase(livekit_sip_calls_ended_total{{job="{job}"}}[1h]))',
                f'increase(livekit_participant_connections_aborted_total{{job="{job}",kind="sip"}}[1h])',
            ],
            fix="sip_trunk_failure: the carrier or the trunk's credentials and addresses; media_failure: RTP ports "
            "and NAT of the SIP service; agent_error: the agent's logs.",
        )
        base = ar.window("baseline")
        drop = ar.ratio("max_drop")
        alert(
            "LiveKitSipAnswerRatioLow",
            "Fewer SIP calls of a trunk are answered than usual.",
            Tier(
                "warning",
                f"{answer_ratio} < {num(1 - drop)} * avg_over_time({answer_ratio}[{base}]) "
                f"and {q.at_least('livekit_sip_calls_started_total', aw, 'trunk', n=ar.number('min_calls', low=0))}",
                ar.duration("for"),
                f"answer ratio below {pct(1 - drop)} of its {base} mean",
                ("telephony.sip_answer_ratio.max_drop", "telephony.sip_answer_ratio.baseline"),
                f"Trunk {lab('trunk')} answered {PCT} of its calls over {aw}, less than {pct(1 - drop)} of its mean over {base}.",
            ),
            meaning=f"More calls than usual end {words(c['sip_unanswered_reasons'])} (callee did not answer, or rejected).",
            impact="Outbound campaigns reach fewer people; a sudden drop often means the carrier flags the caller id as spam.",
            diagnosis=[
                answer_ratio,
                f'sum by (trunk, reason) (increase(livekit_sip_calls_ended_total{{job="{job}"}}[1h]))',
            ],
            fix="Check the caller id's reputation with the carrier, the calling hours, and the dialer's retry pacing.",
        )

    # -- voice agents -----------------------------------------------------------------------------------

    def _voice_agents(self) -> None:
        c, q = self.cfg["voice_agents"], self.q
        job = q.jobs["exporter"]
        alert = partial(
            self.alert, group="livekit-voice-agents.alerts", component="voice_agents", dashboard="voice_agents"
        )
        lat = c["latency"]
        lw, lq = lat.window(), lat.number("quantile", low=0, high=1)
        quantiles = sorted({*[float(x) for x in c["latency_quantiles"]], lq})
        rate_name = f"agent_le:voice_agent_turn_latency_seconds_bucket:rate{lw}"
        recs = [Record(rate_name, q.rate("voice_agent_turn_latency_seconds_bucket", lw, "agent", "le"))]
        recs += [
            Record(
                f"agent:voice_agent_turn_latency_seconds:{qname(x)}_{lw}", f"histogram_quantile({num(x)}, {rate_name})"
            )
            for x in quantiles
        ]
        st = c["stages"]
        sw, sq = st.window(), st.number("quantile", low=0, high=1)
        stages = {  # stage -> (metric, labels beyond agent)
            "end_of_utterance": ("voice_agent_end_of_utterance_delay_seconds", ()),
            "transcription": ("voice_agent_transcription_delay_seconds", ("provider", "model")),
            "llm_ttft": ("voice_agent_llm_time_to_first_token_seconds", ("provider", "model")),
            "tts_ttfb": ("voice_agent_tts_time_to_first_byte_seconds", ("provider", "model")),
        }
        stage_records = {}
        for stage, (metric, extra) in stages.items():
            name = f"{'_'.join(('agent', *extra))}:{metric}:{qname(sq)}_{sw}"
            stage_records[stage] = name
            recs.append(Record(name, q.quantile(sq, metric + "_bucket", sw, "agent", *extra)))
        er = c["error_ratio"]
        ew = er.window()
        err_ratio = f"agent:voice_agent_errors:ratio_rate{ew}"
        recs.append(
            Record(
                err_ratio,
                q.ratio(
                    q.rate("voice_agent_errors_total", ew, "agent", matchers='recoverable="false"'),
                    q.rate("voice_agent_turns_total", ew, "agent"),
                ),
            )
        )
        cs = c["call_success"]
        cw = cs.window()
        failed = regex(c.strings("failed_outcomes"))
        success = f"agent:voice_agent_calls_success:ratio_rate{cw}"
        recs.append(
            Record(
                success,
                "1 - "
                + q.ratio(
                    q.rate("voice_agent_calls_ended_total", cw, "agent", matchers=f'outcome=~"{failed}"'),
                    q.rate("voice_agent_calls_ended_total", cw, "agent"),
                ),
            )
        )
        self.group("livekit-voice-agents.rules", recs)

        p = f"agent:voice_agent_turn_latency_seconds:{qname(lq)}_{lw}"
        alert(
            "LiveKitVoiceAgentLatencyHigh",
            "Voice-to-voice latency of an agent is high.",
            *self.two_tiers(
                lat,
                "voice_agents.latency",
                lambda x: (
                    f"{p} > {num(x)}",
                    f"p{num(lq * 100)} > {num(x)} s",
                    f"p{num(lq * 100)} voice-to-voice latency of {lab('agent')} is {DUR} over {lw}, above {num(x)} s.",
                ),
            ),
            meaning="Users wait too long between the end of their speech and the agent's first audio.",
            impact="Conversations feel slow; users talk over the agent or hang up.",
            diagnosis=[p] + [f'{name}{{agent="<agent>"}}' for name in stage_records.values()],
            fix="The stage queries show which stage ate the budget (see LiveKitVoiceAgentStageLatencyHigh): "
            "switch the provider or model of that stage, move the agent closer to it, or tune the turn detector.",
        )
        th = st["thresholds"]
        tiers = []
        for stage, (_metric, extra) in stages.items():
            limit = th.number(stage, low=0)
            who = f"{lab('agent')}" + (f" ({lab('provider')} {lab('model')})" if extra else "")
            tiers.append(
                Tier(
                    "warning",
                    f"{stage_records[stage]} > {num(limit)}",
                    st.duration("for"),
                    f"{stage}: p{num(sq * 100)} > {num(limit)} s",
                    (f"voice_agents.stages.thresholds.{stage}",),
                    f"p{num(sq * 100)} {stage.replace('_', ' ')} of {who} is {DUR} over {sw}, above {num(limit)} s.",
                    labels={"stage": stage},
                )
            )
        alert(
            "LiveKitVoiceAgentStageLatencyHigh",
            "One stage of an agent's turn is slow.",
            *tiers,
            meaning="A stage of the voice pipeline (end of utterance, transcription, LLM time to first token, TTS "
            "time to first byte) is above its own threshold, per agent and provider / model.",
            impact="It adds directly to the voice-to-voice latency.",
            diagnosis=list(stage_records.values()),
            fix="end_of_utterance: the turn detector's min_endpointing_delay; transcription: the STT provider's "
            "region or model; llm_ttft: a smaller or faster model, shorter prompts, prompt caching; tts_ttfb: a "
            "streaming TTS model. The provider's status page first.",
        )
        alert(
            "LiveKitVoiceAgentErrorRatioHigh",
            "An agent's pipeline fails too often.",
            *self.two_tiers(
                er,
                "voice_agents.error_ratio",
                lambda x: (
                    f"{err_ratio} > {num(x)}",
                    f"> {pct(x)} errors per turn",
                    f"{lab('agent')} had {PCT} non-recoverable errors per turn over {ew}, above {pct(x)}.",
                ),
                read=er.ratio,
            ),
            meaning='Non-recoverable errors (recoverable="false": retries that succeeded do not count) per turn.',
            impact="Turns fail: the agent goes silent, repeats itself or drops the call.",
            diagnosis=[
                err_ratio,
                f'sum by (agent, component, type) (rate(voice_agent_errors_total{{job="{job}",recoverable="false"}}[{ew}]))',
            ],
            fix="The component and type say which provider fails and how (rate limits, timeouts, quota): raise the "
            "quota, add a fallback provider, or fix the tool that throws.",
        )
        alert(
            "LiveKitVoiceAgentCallSuccessRatioLow",
            "Too few of an agent's calls succeed.",
            *self.two_tiers(
                cs,
                "voice_agents.call_success",
                lambda x: (
                    f"{success} < {num(x)} and "
                    f"{q.at_least('voice_agent_calls_ended_total', cw, 'agent', n=cs.number('min_calls', low=0))}",
                    f"< {pct(x)} of calls succeed (of at least {num(cs['min_calls'])})",
                    f"Only {PCT} of the calls of {lab('agent')} ended without failing over {cw}, below {pct(x)}.",
                ),
                read=cs.ratio,
                extra_keys=("voice_agents.failed_outcomes",),
            ),
            meaning=f"Calls end with an outcome of voice_agents.failed_outcomes ({words(c['failed_outcomes'], 'and')}).",
            impact="Callers are not served.",
            diagnosis=[
                success,
                f'sum by (agent, outcome) (increase(voice_agent_calls_ended_total{{job="{job}"}}[{cw}]))',
                f'sum by (agent, component) (increase(voice_agent_errors_total{{job="{job}"}}[{cw}]))',
            ],
            fix="The errors by component point at the failing stage; check the agent's logs for the failed calls.",
        )
        ex = c["calls_expired"]
        w = ex.window()
        alert(
            "LiveKitVoiceAgentCallsExpiring",
            "Calls start but their end never arrives.",
            Tier(
                "warning",
                f"{q.events('voice_agent_calls_expired_total', w, 'agent')} > 0",
                ex.duration("for"),
                "any call expired",
                ("voice_agents.calls_expired.window",),
                f"{VAL} calls of {lab('agent')} reached events.call_ttl without a call_ended over {w}.",
            ),
            meaning="The exporter took calls out of voice_agent_calls_active after events.call_ttl: no call_ended came.",
            impact="Active calls read high until then, and these calls have no outcome or duration.",
            diagnosis=[f'sum by (agent) (increase(voice_agent_calls_expired_total{{job="{job}"}}[1h]))'],
            fix="Agents crash or are killed before they send call_ended (OOM, deploys without draining); with several "
            "exporter replicas, a call's events must reach one replica (see docs/alerts.md, high availability).",
        )
        alert(
            "LiveKitVoiceAgentDependencyDown",
            "An agent reports a dependency down.",
            Tier(
                "critical",
                f"{q.agg('max', 'voice_agent_dependency_up', 'agent', 'dependency')} == 0",
                c.duration("dependency_down_for"),
                "dependency_up == 0",
                ("voice_agents.dependency_down_for",),
                f"{lab('agent')} reports {lab('dependency')} down for {c['dependency_down_for']}.",
            ),
            meaning="The agent's dependency_status reports say the dependency (an STT, LLM or TTS provider, a CRM) is down. "
            "With several exporter replicas, each keeps the last report it received: the alert takes the "
            'most hopeful (max), so a stale "up" on another replica can delay it by up to events.dependency_ttl.',
            impact="Calls that need it fail or degrade.",
            diagnosis=[f'voice_agent_dependency_up{{job="{job}"}}'],
            fix="The provider's status page; switch to a fallback provider.",
        )
        cp = c["campaign_stalled"]
        w = cp.window()
        alert(
            "LiveKitVoiceAgentCampaignStalled",
            "A running campaign places no calls.",
            Tier(
                "warning",
                f"{q.agg('max', 'voice_agent_campaign_running', 'campaign')} == 1 unless "
                f"{q.rate('voice_agent_calls_started_total', w, 'campaign', fn='increase')} > 0",
                cp.duration("for"),
                f"running, no call started over {w}",
                ("voice_agents.campaign_stalled.window",),
                f"Campaign {lab('campaign')} reports running but started no call over {w}.",
            ),
            dashboard="campaigns",
            meaning="The dialer says the campaign runs, but no call_started arrived for it.",
            impact="The campaign does not progress.",
            diagnosis=[
                f'voice_agent_campaign_running{{job="{job}"}}',
                f'voice_agent_calls_queued{{job="{job}"}}',
                f'sum by (campaign) (increase(voice_agent_calls_started_total{{job="{job}"}}[1h]))',
            ],
            fix="An empty queue, calling hours, exhausted trunk capacity, or a dialer stuck: check the dialer's logs.",
        )
        sp = c["spend"]
        w, factor = sp.window(), sp.number("factor", low=1)
        cost = lambda off: q.rate("voice_agent_estimated_cost_dollars_total", w, "agent", fn="increase", offset=off)  # noqa: E731
        offset = "1w"
        alert(
            "LiveKitVoiceAgentSpendHigh",
            "An agent's estimated spend is well above last week's.",
            Tier(
                "warning",
                f"{cost('')} > {num(factor)} * {cost(offset)} and {cost('')} > {num(sp.number('min_dollars', low=0))}",
                sp.duration("for"),
                f"> {num(factor)} x the same {w} last week (and > ${num(sp['min_dollars'])})",
                ("voice_agents.spend.factor", "voice_agents.spend.min_dollars"),
                f"{lab('agent')} spent an estimated ${VAL} over the last {w}, more than {num(factor)} x the same time last week.",
            ),
            meaning="Estimated cost (usage x events.prices) grew against the week before.",
            impact="The provider bills grow; often a loop (an agent re-prompting itself) or abuse.",
            diagnosis=[
                f'sum by (agent, component, provider, model) (increase(voice_agent_estimated_cost_dollars_total{{job="{job}"}}[{w}]))',
                f'sum by (agent) (increase(voice_agent_calls_ended_total{{job="{job}"}}[{w}]))',
            ],
            fix="More calls explain it: fine. Cost per call up: longer prompts, a pricier model, a runaway tool loop.",
        )

    # -- campaigns (the real-estate seed's dashboard, as recording rules) --------------------------------

    def _campaigns(self) -> None:
        c, q = self.cfg["campaigns"], self.q
        w = c.window()
        has = 'campaign!=""'
        started = q.rate("voice_agent_calls_started_total", w, "campaign", matchers=has)
        answered = q.rate("voice_agent_calls_answered_total", w, "campaign", matchers=has)
        qualified = q.rate(
            "voice_agent_calls_ended_total",
            w,
            "campaign",
            matchers=f'{has},outcome=~"{regex(c.strings("qualified_outcomes"))}"',
        )
        converted = q.rate(
            "voice_agent_calls_ended_total",
            w,
            "campaign",
            matchers=f'{has},outcome=~"{regex(c.strings("converted_outcomes"))}"',
        )
        self.group(
            "livekit-campaigns.rules",
            [
                Record(f"campaign:voice_agent_calls_answer:ratio_rate{w}", q.ratio(answered, started)),
                Record(f"campaign:voice_agent_calls_qualification:ratio_rate{w}", q.ratio(qualified, answered)),
                Record(f"campaign:voice_agent_calls_conversion:ratio_rate{w}", q.ratio(converted, started)),
            ],
        )

    # -- trends --------------------------------------------------------------------------------------------

    def _trends(self) -> None:
        c, q = self.cfg["trends"], self.q
        job = q.jobs["exporter"]
        w, off, drop = c.window(), c.window("offset"), c.ratio("max_drop")
        mins = c["min_last_week"]
        tiers = []
        for signal, metric in (("calls", "voice_agent_calls_started_total"), ("turns", "voice_agent_turns_total")):
            now = q.rate(metric, w, "agent", fn="increase")
            before = q.rate(metric, w, "agent", fn="increase", offset=off)
            tiers.append(
                Tier(
                    "warning",
                    f"({now} or 0 * {before}) < {num(1 - drop)} * {before} and {before} >= {num(mins.number(signal, low=0))}",
                    c.duration("for"),
                    f"{signal} < {pct(1 - drop)} of the same {w} {off} ago",
                    ("trends.max_drop", f"trends.min_last_week.{signal}"),
                    f"{lab('agent')} had {VAL} {signal} over the last {w}, less than {pct(1 - drop)} of the same {w} {off} ago.",
                    labels={"signal": signal},
                )
            )
        rooms = 'occupancy:livekit_rooms:max{occupancy="occupied"}'
        now, before = f"avg_over_time({rooms}[{w}])", f"avg_over_time({rooms}[{w}] offset {off})"
        tiers.append(
            Tier(
                "warning",
                f"{now} < {num(1 - drop)} * {before} and {before} >= {num(mins.number('rooms', low=0))}",
                c.duration("for"),
                f"occupied rooms < {pct(1 - drop)} of the same {w} {off} ago",
                ("trends.max_drop", "trends.min_last_week.rooms"),
                f"LiveKit had {VAL} occupied rooms on average over the last {w}, less than {pct(1 - drop)} of the same {w} {off} ago.",
                labels={"signal": "rooms"},
            )
        )
        alert = partial(self.alert, group="livekit-trends.alerts", component="trends", dashboard="overview")
        alert(
            "LiveKitTrafficBelowLastWeek",
            "Traffic is well below the same hour last week.",
            *tiers,
            meaning=f"Calls or turns of an agent, or LiveKit's occupied rooms, fell by more than {pct(drop)} against the "
            f"same {w} {off} earlier (quiet when there was little traffic then too).",
            impact="Often the first sign of an outage nothing else sees: a broken phone number, a dispatch rule, a client release.",
            diagnosis=[
                f'sum by (agent) (increase(voice_agent_calls_started_total{{job="{job}"}}[1h]))',
                f'sum by (agent) (increase(voice_agent_calls_started_total{{job="{job}"}}[1h] offset 1w))',
                "occupancy:livekit_rooms:max",
            ],
            fix="Holidays and campaigns explain some; otherwise trace the calls' way in: SIP trunks and dispatch "
            "rules (LiveKitSipCallFailureRatioHigh), agent workers (LiveKitAgentWorkersAbsent), web clients.",
        )

    # -- SLOs ------------------------------------------------------------------------------------------------

    def slo_definitions(self) -> dict[str, tuple[float, str]]:
        """slo name -> (objective, the ratio of bad events as a template on {w})."""
        from ..events.pipeline import TURN_BUCKETS

        c, q = self.cfg["slos"], self.q
        tl, cs = c["turn_latency"], c["call_success"]
        bound = tl.number("threshold", low=0)
        if bound not in TURN_BUCKETS:
            raise MixinError(
                f"{self.cfg.source}: slos.turn_latency.threshold {num(bound)} is not a bucket bound of "
                f"voice_agent_turn_latency_seconds ({', '.join(num(b) for b in TURN_BUCKETS)}): the SLI counts "
                "turns at or under a bound, so pick one of these"
            )
        failed = regex(self.cfg["voice_agents"].strings("failed_outcomes"))
        return {
            "turn-latency": (
                tl.ratio("objective"),
                "1 - "
                + q.rate("voice_agent_turn_latency_seconds_bucket", "{w}", "agent", matchers=le_matcher(bound))
                + " / ("
                + q.rate("voice_agent_turn_latency_seconds_count", "{w}", "agent")
                + " > 0)",
            ),
            "call-success": (
                cs.ratio("objective"),
                q.ratio(
                    q.rate("voice_agent_calls_ended_total", "{w}", "agent", matchers=f'outcome=~"{failed}"'),
                    q.rate("voice_agent_calls_ended_total", "{w}", "agent"),
                ),
            ),
        }

    def _slos(self) -> None:
        c = self.cfg["slos"]
        period = c.window("period")
        burn = []
        for i, node in enumerate(c.mappings("burn_rates", {"severity", "long", "short", "factor", "for"})):
            sev = node["severity"]
            if sev not in ("critical", "warning", "info"):
                raise MixinError(f"{c.source}: slos.burn_rates[{i}].severity: {sev!r} is not critical, warning or info")
            burn.append(
                (sev, node.window("long"), node.window("short"), node.number("factor", low=0), node.duration("for"))
            )
        budget_interval = c.duration("budget_interval", positive=True)
        if seconds(budget_interval) >= 300:
            raise MixinError(
                f"{c.source}: slos.budget_interval {budget_interval} must stay under Prometheus' 5m lookback "
                "delta, or the day-long SLI series it records go missing between evaluations"
            )
        for name, (objective, _) in self.slo_definitions().items():
            if not 0 < objective < 1:
                raise MixinError(
                    f"{c.source}: slos.{name.replace('-', '_')}.objective {num(objective)} must lie between 0 and 1"
                )
            for i, (_, _, _, factor, _) in enumerate(burn):
                if factor * (1 - objective) >= 1:
                    raise MixinError(
                        f"{c.source}: slos.burn_rates[{i}].factor {num(factor)} x the {name} error budget "
                        f"{num(1 - objective)} is {num(factor * (1 - objective))}: an error ratio never exceeds 1, so "
                        "this alert could never fire; lower the factor or raise the objective"
                    )
        windows = sorted({w for _, lw, sw, _, _ in burn for w in (lw, sw)} | {period}, key=seconds)
        fast = [
            Record(f"slo:sli_error:ratio_rate{w}", expr.replace("{w}", w), {"slo": name})
            for w in windows
            if seconds(w) < 86400
            for name, (_, expr) in self.slo_definitions().items()
        ]
        slow = [
            Record(f"slo:sli_error:ratio_rate{w}", expr.replace("{w}", w), {"slo": name})
            for w in windows
            if seconds(w) >= 86400
            for name, (_, expr) in self.slo_definitions().items()
        ]
        for name, (objective, _) in self.slo_definitions().items():
            fast.append(Record("slo:objective:ratio", f"vector({num(objective)})", {"slo": name}))
            slow.append(
                Record(
                    "slo:error_budget_remaining:ratio",
                    f'1 - slo:sli_error:ratio_rate{period}{{slo="{name}"}} / {num(1 - objective)}',
                    {"slo": name},
                )
            )
        self.group("livekit-slo.rules", fast)
        self.group("livekit-slo-budget.rules", slow, interval=budget_interval)
        tiers = []
        for name, (objective, _) in self.slo_definitions().items():
            budget = 1 - objective
            for sev, lw, sw, factor, for_ in burn:
                limit = factor * budget
                tiers.append(
                    Tier(
                        sev,
                        f'slo:sli_error:ratio_rate{lw}{{slo="{name}"}} > {num(limit)} and '
                        f'slo:sli_error:ratio_rate{sw}{{slo="{name}"}} > {num(limit)}',
                        for_,
                        f"{name}: error ratio > {num(factor)} x budget over {lw} and {sw}",
                        ("slos.burn_rates", f"slos.{name.replace('-', '_')}.objective"),
                        f"{lab('agent')} burns the {name} error budget ({pct(budget)} of {period}) {num(factor)} x too fast: "
                        f"{PCT} bad over {lw}, above {pct(limit)}.",
                        labels={"slo": name, "long_window": lw, "short_window": sw},
                    )
                )
        alert = partial(self.alert, group="livekit-slo.alerts", component="slo", dashboard="slo")
        alert(
            "LiveKitSloErrorBudgetBurn",
            "An agent burns its error budget too fast.",
            *tiers,
            meaning="Over both a long and a short window, the share of bad events (turns slower than the objective's "
            "bound, or failed calls) exceeds the burn-rate factor times the error budget. Pages (critical) "
            "for a fast burn, tickets (warning) for a slow one.",
            impact="At this rate the objective is missed before the period ends: users notice.",
            diagnosis=[
                "slo:sli_error:ratio_rate1h",
                "slo:error_budget_remaining:ratio",
                f"agent:voice_agent_turn_latency_seconds:{qname(self.cfg['voice_agents']['latency'].number('quantile'))}_{self.cfg['voice_agents']['latency'].duration('window')}",
            ],
            fix="A page: act now, as for LiveKitVoiceAgentLatencyHigh or LiveKitVoiceAgentCallSuccessRatioLow. A ticket: "
            "find the slow degradation (a model change, a provider's region) within days.",
        )
        tl = c["turn_latency"]
        bound = num(tl.number("threshold"))
        count = self.q.m("voice_agent_turn_latency_seconds_count")
        bucket = self.q.m("voice_agent_turn_latency_seconds_bucket", le_matcher(tl.number("threshold")))
        alert(
            "LiveKitSloBucketMissing",
            "The turn-latency SLO has no bucket at its bound.",
            Tier(
                "warning",
                f"count {self.q.by('agent')} ({count}) unless count {self.q.by('agent')} ({bucket})",
                tl.duration("bucket_missing_for"),
                f"turns observed, no le={bound} bucket",
                ("slos.turn_latency.threshold", "slos.turn_latency.bucket_missing_for"),
                f"{lab('agent')} reports turn latencies, but voice_agent_turn_latency_seconds has no {bound} s bucket: "
                "its turn-latency SLI, budget and burn-rate alerts are absent.",
            ),
            meaning=f"The exporter's events.buckets for voice_agent_turn_latency_seconds leave out {bound}, the bound of "
            "slos.turn_latency: the SLI cannot be computed, so the SLO says nothing.",
            impact="Latency regressions burn no visible budget and page nobody through the SLO.",
            diagnosis=[f'count by (le) (voice_agent_turn_latency_seconds_bucket{{job="{self.q.jobs["exporter"]}"}})'],
            fix=f"Add {bound} to events.buckets.voice_agent_turn_latency_seconds in the exporter's configuration, or set "
            "slos.turn_latency.threshold in mixin.yml to one of its bounds and run `make rules`.",
        )

    # -- LiveKit server's own metrics (optional) -------------------------------------------------------------

    # -- long ranges: what dashboards over days and weeks, and long-term storage, read -----------------

    # counter -> the labels its recorded rates keep beyond aggregation.keep (all bounded: no room,
    # participant or call id; agent and campaign are bounded by the exporter's labels.max_values)
    LONG_TERM_RATES: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("livekit_room_sessions_started_total", ()),
        ("livekit_room_sessions_ended_total", ("end_reason",)),
        ("livekit_participant_sessions_started_total", ("kind",)),
        ("livekit_participant_sessions_ended_total", ("kind", "reason")),
        ("livekit_track_publications_total", ("type", "source")),
        ("livekit_egress_started_total", ("type",)),
        ("livekit_egress_ended_total", ("type", "status")),
        ("livekit_ingress_started_total", ("input_type",)),
        ("livekit_ingress_ended_total", ("input_type", "status")),
        ("livekit_sip_calls_started_total", ("trunk",)),
        ("livekit_sip_calls_ended_total", ("trunk", "reason")),
        ("livekit_agent_jobs_started_total", ("agent_name",)),
        ("livekit_agent_jobs_ended_total", ("agent_name", "status")),
        ("livekit_webhook_events_total", ("event",)),
        ("livekit_api_errors_total", ("service", "code")),
        ("voice_agent_calls_started_total", ("agent", "direction")),
        ("voice_agent_calls_ended_total", ("agent", "outcome")),
        ("voice_agent_turns_total", ("agent",)),
        ("voice_agent_errors_total", ("agent", "component")),
        ("voice_agent_estimated_cost_dollars_total", ("agent", "component")),
    )

    def _long_term(self) -> None:
        """Rates of the lifecycle counters and per-agent latency quantiles over each long_term window,
        evaluated every long_term.interval: what a dashboard over weeks reads instead of raw samples,
        and what remote_write keeps (with the SLO series and the other recording rules)."""
        c, q = self.cfg["long_term"], self.q
        interval = c.duration("interval", positive=True)
        if seconds(interval) >= 300:
            raise MixinError(
                f"{c.source}: long_term.interval {interval} must stay under Prometheus' 5m lookback delta, "
                "or the recorded series go missing between evaluations (coarser resolution is long-term "
                "storage's downsampling, not the evaluation interval)"
            )
        windows = []
        for i, w in enumerate(c.nonempty_list("windows", "durations (e.g. [5m, 1h])")):
            s = config_seconds(w, f"{c.source}: long_term.windows[{i}]")
            low = self.cfg._ctx.get("min_window") or 0
            if s < max(low, seconds(interval)):
                raise MixinError(
                    f"{c.source}: long_term.windows[{i}]: {w} is shorter than long_term.interval {interval} "
                    f"or two scrape intervals ({low:g}s): a rate over it would skip samples or hold one"
                )
            windows.append(w)
        windows = sorted(set(windows), key=seconds)
        existing = {r.record for g in self.records for r in g.rules}
        recs = []
        for w in windows:
            for metric, labels in self.LONG_TERM_RATES:
                base = metric.removesuffix("_total")
                recs.append(Record(f"{'_'.join(labels) or 'job'}:{base}:rate{w}", q.rate(metric, w, *labels)))
            bucket = f"agent_le:voice_agent_turn_latency_seconds_bucket:rate{w}"
            recs.append(Record(bucket, q.rate("voice_agent_turn_latency_seconds_bucket", w, "agent", "le")))
            for x in sorted({float(v) for v in self.cfg["voice_agents"]["latency_quantiles"]}):
                recs.append(
                    Record(
                        f"agent:voice_agent_turn_latency_seconds:{qname(x)}_{w}",
                        f"histogram_quantile({num(x)}, {bucket})",
                    )
                )
        recs = [r for r in recs if r.record not in existing]  # a window another group records already
        self.group("livekit-long-term.rules", recs, interval=interval)

    def _livekit_server(self) -> None:
        c, q = self.cfg["livekit_server"], self.q
        job = q.jobs["livekit_server"]
        alert = partial(self.alert, group="livekit-server.alerts", component="media_quality", dashboard="nodes")
        qu = c["quality"]
        w, qq = qu.window(), qu.number("quantile", low=0, high=1)
        score = q.quantile(qq, "livekit_quality_score_bucket", w, job="livekit_server")
        alert(
            "LiveKitConnectionQualityLow",
            "Participants' connection quality is low.",
            *self.two_tiers(
                qu,
                "livekit_server.quality",
                lambda x: (
                    f"{score} < {num(x)}",
                    f"p{num(qq * 100)} score < {num(x)}",
                    f"p{num(qq * 100)} connection quality score is {VAL} over {w}, below {num(x)} (LiveKit's MOS-like score, 1 to 4.5).",
                ),
                read=lambda sev: qu.number(sev, low=1, high=4.5),
            ),
            meaning="LiveKit scores each participant's connection every 5 s (a MOS from 1 to 4.5; above about 4.0 "
            "it calls the quality excellent). The chosen quantile of those scores is low.",
            impact="Users hear choppy audio and see frozen video; voice agents mis-hear them.",
            diagnosis=[
                f'histogram_quantile(0.5, sum by (instance, le) (rate(livekit_quality_score_bucket{{job="{job}"}}[10m])))',
                f'histogram_quantile(0.95, sum by (direction, le) (rate(livekit_packet_loss_percent_bucket{{job="{job}"}}[10m])))',
                f'histogram_quantile(0.95, sum by (le) (rate(livekit_rtt_ms_bucket{{job="{job}"}}[10m])))',
            ],
            fix="Loss, jitter and RTT say which: users' networks (one region, one ISP), the node's bandwidth or CPU, "
            "or TURN relaying. Add nodes closer to the users.",
        )
        for name, key, metric, unit, label, fix in (
            (
                "LiveKitPacketLossHigh",
                "packet_loss",
                "livekit_packet_loss_percent_bucket",
                "%",
                "packet loss",
                "Loss on incoming streams: the publishers' networks; on outgoing: the subscribers' or the node's uplink.",
            ),
            (
                "LiveKitJitterHigh",
                "jitter",
                "livekit_jitter_us_bucket",
                " us",
                "jitter",
                "Congested networks between users and the node; check the node's CPU and network first.",
            ),
            (
                "LiveKitRttHigh",
                "rtt",
                "livekit_rtt_ms_bucket",
                " ms",
                "round-trip time",
                "Users far from the node: deploy a region closer to them, or check TURN over TCP/TLS fallbacks.",
            ),
        ):
            n = c[key]
            w, qq, limit = n.window(), n.number("quantile", low=0, high=1), n.number("threshold", low=0)
            alert(
                name,
                f"LiveKit's {label} is high.",
                Tier(
                    "warning",
                    f"{q.quantile(qq, metric, w, 'direction', job='livekit_server')} > {num(limit)}",
                    n.duration("for"),
                    f"p{num(qq * 100)} > {num(limit)}{unit}",
                    (f"livekit_server.{key}.threshold",),
                    f"p{num(qq * 100)} {label} of {lab('direction')} streams is {VAL}{unit} over {w}, above {num(limit)}{unit}.",
                ),
                meaning=f"LiveKit's per-stream {label} statistics ({metric.removesuffix('_bucket')}, in LiveKit's unit) are high.",
                impact="Audio and video degrade for the users on those streams.",
                diagnosis=[
                    f'histogram_quantile({num(qq)}, sum by (instance, direction, le) (rate({metric}{{job="{job}"}}[{w}])))'
                ],
                fix=fix,
            )

    # -- livekit-agents workers (optional) -------------------------------------------------------------------

    def _agent_workers(self) -> None:
        c, q = self.cfg["agent_workers"], self.q
        job = q.jobs["agent_workers"]
        alert = partial(self.alert, group="livekit-agent-workers.alerts", component="agent_workers", dashboard="nodes")
        ld = c["load"]
        w = ld.window()
        limit = c.ratio("load_threshold") * ld.ratio("near")
        alert(
            "LiveKitAgentWorkerLoadHigh",
            "A livekit-agents worker is near the load where it refuses jobs.",
            Tier(
                "warning",
                f"avg_over_time({q.m('lk_agents_worker_load', job='agent_workers')}[{w}]) > {num(limit)}",
                ld.duration("for"),
                f"load > {num(ld['near'])} x load_threshold ({num(limit)})",
                ("agent_workers.load.near", "agent_workers.load_threshold"),
                f"Worker {lab('instance')} of {lab('agent')} has a mean load of {PCT} over {w}; it marks itself "
                f"full at {pct(c['load_threshold'])}.",
            ),
            meaning="livekit-agents marks a worker full (and LiveKit sends it no new job) once its load (CPU, 0-1) "
            "reaches load_threshold.",
            impact="New calls wait for another worker or are not answered.",
            diagnosis=[f'lk_agents_worker_load{{job="{job}"}}', f'lk_agents_active_job_count{{job="{job}"}}'],
            fix="Add workers (or let the autoscaler do it on this load), or give each more CPU.",
        )
        ab = c["absent"]
        w = ab.window()
        seen = ab.window("seen_within")
        calls = q.rate("voice_agent_calls_started_total", w, "agent", matchers='agent!="__other__"', fn="increase")
        workers = f"max by (agent) ({q.m('up', job='agent_workers')})"
        scraped = f"group by (agent) (max_over_time({q.m('up', job='agent_workers')}[{seen}]))"
        alert(
            "LiveKitAgentWorkersAbsent",
            "An agent that receives calls has no worker up.",
            Tier(
                "critical",
                f"({calls} > 0 unless on (agent) {workers} == 1) and on (agent) {scraped}",
                ab.duration("for"),
                f"calls over {w}, no worker up (of the agents with workers seen within {seen})",
                ("agent_workers.absent.window", "agent_workers.absent.seen_within"),
                f"{lab('agent')} had calls over the last {w} but none of its workers answers Prometheus.",
            ),
            meaning="No worker target with this agent label is up, though the agent had calls recently and "
            "Prometheus scraped its workers within the seen_within window (agents whose workers it never "
            "scrapes are not judged).",
            impact="Calls for this agent are not answered (LiveKit has no worker to dispatch them to).",
            diagnosis=[
                f'up{{job="{job}"}}',
                f'sum by (agent) (increase(voice_agent_calls_started_total{{job="{q.jobs["exporter"]}"}}[{w}]))',
            ],
            fix="Start the workers; check that they reach LiveKit (their health check on port 8081 answers 503 when "
            "they cannot). Prometheus must scrape them with the agent label (prometheus.targets.agent_workers).",
        )
