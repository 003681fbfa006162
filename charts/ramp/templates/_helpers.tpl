{{/* The chart name, overridable. */}}
{{- define "ramp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The fully qualified app name: the release name when it already contains the chart name,
else "<release>-<chart>"; at most 63 characters (a DNS label).
*/}}
{{- define "ramp.fullname" -}}
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

{{- define "ramp.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable for the life of the release (Deployment selectors are immutable). */}}
{{- define "ramp.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ramp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Standard labels of every object. */}}
{{- define "ramp.labels" -}}
helm.sh/chart: {{ include "ramp.chart" . }}
{{ include "ramp.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: controller
app.kubernetes.io/part-of: ramp
{{- end }}

{{- define "ramp.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ramp.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ramp.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "ramp.specsConfigMap" -}}
{{- printf "%s-specs" (include "ramp.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The namespaces this controller manages, comma-separated; "" means every namespace (watchAllNamespaces).
Neither watchNamespaces nor watchAllNamespaces set: the release namespace only (least privilege by default).
Both set: a contradiction, refused (values.schema.json refuses it too; this also holds with the schema skipped).
*/}}
{{- define "ramp.watchNamespaces" -}}
{{- if .Values.watchAllNamespaces }}
{{- if .Values.watchNamespaces }}
{{- fail (printf "watchAllNamespaces is true but watchNamespaces lists %s: set one or the other" (join ", " .Values.watchNamespaces)) }}
{{- end }}
{{- else if .Values.watchNamespaces }}
{{- join "," .Values.watchNamespaces }}
{{- else }}
{{- .Release.Namespace }}
{{- end }}
{{- end }}

{{/*
RBAC rules in every managed namespace (a Role each, or one ClusterRole with watchAllNamespaces): exactly the
requests the controller makes (tests/charts/rbac.py maps each Kubernetes API call in controller/ to its rule).
- VirtualServices: list (one LIST per namespace per tick), get, create (when absent), update (PUT with
  resourceVersion: routes and rollout state in one write).
- DestinationRules: get, create (when absent), update (subsets).
- HTTPRoutes (gateway.networking.k8s.io), only with gatewayApi.enabled (the Gateway API router, specs with
  router: gateway-api): the VirtualService rule's verbs, list (one LIST per namespace per tick), get, create
  (when absent), update (PUT with resourceVersion: routes and rollout state in one write). Nothing on Gateways
  or Services: the route names its parents and backends, it does not change them.
- Deployments: list (version availability).
- Events: create (what Ramp did and why, on the RampRollout or the route object).
- RampRollouts (ramp.rolloutResourceRules): get, list, watch; patch (to remove a command annotation once
  forwarded) and patch on ramprollouts/status.
No watch or patch on anything else, no delete; no Pods, Secrets or ConfigMaps.
*/}}
{{- define "ramp.workloadRules" -}}
- apiGroups: ["networking.istio.io"]
  resources: ["virtualservices"]
  verbs: ["get", "list", "create", "update"]
- apiGroups: ["networking.istio.io"]
  resources: ["destinationrules"]
  verbs: ["get", "create", "update"]
{{- if (.Values.gatewayApi | default dict).enabled }}
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["get", "list", "create", "update"]
{{- end }}
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["list"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/*
A spec in rolloutSpecs with router gateway-api needs the HTTPRoute rule (gatewayApi.enabled): without it
every request for its route would be refused (403) in the middle of the rollout, so the rendering fails
instead. Rendered (empty) by rbac.yaml.
*/}}
{{- define "ramp.checkGatewayApi" -}}
{{- if not (.Values.gatewayApi | default dict).enabled }}
{{- range $file, $spec := .Values.rolloutSpecs }}
{{- if eq (toString $spec.router) "gateway-api" }}
{{- fail (printf "rolloutSpecs.%s: router gateway-api needs gatewayApi.enabled: true (the controller's RBAC for HTTPRoutes)" $file) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Sharding: the shard count (1: no sharding), and the Lease names the controller uses as a JSON list:
leaderElection.leaseName itself with one shard, else <leaseName>-shard-<i>-of-<N> (controller/sharding.py).
*/}}
{{- define "ramp.shards" -}}
{{- $sharding := .Values.sharding | default dict -}}
{{- $sharding.shards | default 1 | int -}}
{{- end }}

{{- define "ramp.leaseNames" -}}
{{- $shards := include "ramp.shards" . | int -}}
{{- $base := .Values.leaderElection.leaseName -}}
{{- if eq $shards 1 -}}
{{- list $base | toJson -}}
{{- else -}}
{{- $names := list -}}
{{- range $i := until $shards -}}
{{- $names = append $names (printf "%s-shard-%d-of-%d" $base $i $shards) -}}
{{- end -}}
{{- $names | toJson -}}
{{- end -}}
{{- end }}
