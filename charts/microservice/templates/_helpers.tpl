{{- define "microservice.namespace" -}}
{{- .Values.namespace | default .Release.Namespace }}
{{- end }}

{{/* The Istio host, defaulted exactly as Ramp's spec does: <service>.<namespace>.svc.cluster.local */}}
{{- define "microservice.host" -}}
{{- .Values.host | default (printf "%s.%s.svc.cluster.local" .Values.service (include "microservice.namespace" .)) }}
{{- end }}

{{- define "microservice.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "microservice.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
One version's container settings, as JSON: its own image (repository defaults to the top-level one, tag
required), pullPolicy, resources and command, each falling back to the top-level value. The command falls
back to the top-level `command` only while the version runs the top-level repository; a version with its
own repository runs its image's ENTRYPOINT/CMD unless it sets `command`. Call with (list $ $version).
*/}}
{{- define "microservice.versionContainer" -}}
{{- $root := index . 0 }}
{{- $version := index . 1 }}
{{- $top := $root.Values.image }}
{{- $own := $version.image | default dict }}
{{- $repository := $own.repository | default $top.repository }}
{{- $tag := $own.tag | default ($top.tag | default $root.Chart.AppVersion) }}
{{- $command := $root.Values.command }}
{{- if ne $repository $top.repository }}
{{- $command = list }}
{{- end }}
{{- if hasKey $version "command" }}
{{- $command = $version.command }}
{{- end }}
{{- toJson (dict
  "image" (printf "%s:%s" $repository $tag)
  "tag" $tag
  "pullPolicy" ($own.pullPolicy | default $top.pullPolicy)
  "resources" (hasKey $version "resources" | ternary $version.resources $root.Values.resources)
  "command" $command) }}
{{- end }}

{{/* The VirtualService's hosts: the service's host, then the extra hosts, as Ramp renders them (JSON). */}}
{{- define "microservice.hosts" -}}
{{- toJson (prepend (.Values.hosts | default list) (include "microservice.host" .)) }}
{{- end }}

{{/* Standard labels (not on the Istio objects: those carry exactly the labels Ramp renders). */}}
{{- define "microservice.labels" -}}
{{ include "microservice.commonLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
{{- end }}

{{/* The standard labels but the version: a Deployment labels its own version's image tag. */}}
{{- define "microservice.commonLabels" -}}
helm.sh/chart: {{ include "microservice.chart" . }}
app.kubernetes.io/name: {{ .Values.service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Checks what the schema cannot express: unique version names, a positive weight sum, hosts and gateways
listed once (as the rollout spec requires), a header route to a known version with a regex that compiles,
and the router's own rules (microservice.validateRouter). Rendered (empty) by every template that depends
on them.
*/}}
{{- define "microservice.validate" -}}
{{- $names := list }}
{{- $total := 0 }}
{{- range .Values.versions }}
{{- if has .name $names }}
{{- fail (printf "versions: %q is listed twice" .name) }}
{{- end }}
{{- $names = append $names .name }}
{{- $total = add $total (int64 .weight) }}
{{- end }}
{{- if le (int64 $total) 0 }}
{{- fail "versions: the weights must have a positive sum (every version has weight 0)" }}
{{- end }}
{{- $hosts := list }}
{{- range (include "microservice.hosts" . | fromJsonArray) }}
{{- /* Istio reads a short name (no dot) as <name>.<namespace>.svc.cluster.local */}}
{{- $full := contains "." . | ternary . (printf "%s.%s.svc.cluster.local" . (include "microservice.namespace" $)) }}
{{- if has $full $hosts }}
{{- fail (printf "hosts: %q is listed twice (the service's own host %q is always served)" . (include "microservice.host" $)) }}
{{- end }}
{{- $hosts = append $hosts $full }}
{{- end }}
{{- $gateways := list }}
{{- range .Values.gateways }}
{{- $full := or (contains "/" .) (eq . "mesh") | ternary . (printf "%s/%s" (include "microservice.namespace" $) .) }}
{{- if has $full $gateways }}
{{- fail (printf "gateways: %q is listed twice" .) }}
{{- end }}
{{- $gateways = append $gateways $full }}
{{- end }}
{{- with .Values.headerRoute }}
{{- if not (has .version $names) }}
{{- fail (printf "headerRoute.version: %q is not one of the versions (%s)" .version (join ", " $names)) }}
{{- end }}
{{- if eq (.match | default "exact") "regex" }}
{{- include "microservice.headerRoute.value must be an RE2 regex" . }}
{{- end }}
{{- end }}
{{- include "microservice.validateRouter" . }}
{{- end }}

{{/*
Istio, Envoy and (as Ramp renders it) the HTTPRoute match a regex header route with RE2: Go's regexp is RE2,
so a value it cannot compile fails here, under this template's name, instead of in the data plane.
*/}}
{{- define "microservice.headerRoute.value must be an RE2 regex" -}}
{{- $_ := mustRegexMatch .value "" }}
{{- end }}

{{/* "true" when the HTTPRoute routes the traffic (router: gateway-api), else "". */}}
{{- define "microservice.gatewayApi" -}}
{{- if eq (.Values.router | default "istio") "gateway-api" }}true{{ end }}
{{- end }}

{{/* "true" when each version gets its own Service: versionServices if set, else only with gateway-api. */}}
{{- define "microservice.versionServices" -}}
{{- if kindIs "bool" .Values.versionServices }}
{{- if .Values.versionServices }}true{{ end }}
{{- else }}
{{- include "microservice.gatewayApi" . }}
{{- end }}
{{- end }}

{{/* One version's Service name: versionService with {service} and {version} replaced. (list $ $versionName) */}}
{{- define "microservice.versionServiceName" -}}
{{- $root := index . 0 }}
{{- $root.Values.versionService | replace "{service}" $root.Values.service | replace "{version}" (index . 1) }}
{{- end }}

{{/*
The HTTPRoute's parentRefs as Ramp renders a spec's gateway_api.parent_refs (JSON): group and kind default
to a Gateway's, namespace, sectionName and port only when given; none listed: the service itself as a GAMMA
(mesh) parent, {group: "", kind: Service, name: <service>}. hasKey, not default: group "" is meaningful.
*/}}
{{- define "microservice.parentRefs" -}}
{{- $refs := list }}
{{- range .Values.parentRefs }}
{{- $ref := dict
  "group" (hasKey . "group" | ternary .group "gateway.networking.k8s.io")
  "kind" (hasKey . "kind" | ternary .kind "Gateway")
  "name" .name }}
{{- with .namespace }}{{ $_ := set $ref "namespace" . }}{{ end }}
{{- with .sectionName }}{{ $_ := set $ref "sectionName" . }}{{ end }}
{{- if hasKey . "port" }}{{ $_ := set $ref "port" (int64 .port) }}{{ end }}
{{- $refs = append $refs $ref }}
{{- else }}
{{- $refs = list (dict "group" "" "kind" "Service" "name" .Values.service) }}
{{- end }}
{{- toJson $refs }}
{{- end }}

{{/*
The router's rules, as a rollout spec's (controller/spec_routers.py): Istio's gateways do not apply to
gateway-api and parentRefs only to it; gateway-api weights the version Services, so they cannot be turned
off; versionService must contain {version}, know no other placeholder and give every version a distinct
Service name (a DNS label) that is not the main Service's; a parent is listed once (namespace defaulted), and
a Service parent is in the core group.
*/}}
{{- define "microservice.validateRouter" -}}
{{- $namespace := include "microservice.namespace" . }}
{{- if include "microservice.gatewayApi" . }}
{{- if .Values.gateways }}
{{- fail (printf "gateways: Istio gateways do not apply to router gateway-api (%s); attach the HTTPRoute with parentRefs" (join ", " .Values.gateways)) }}
{{- end }}
{{- if and (kindIs "bool" .Values.versionServices) (not .Values.versionServices) }}
{{- fail "versionServices: false, but router gateway-api weights one Service per version: leave it unset (null) or true" }}
{{- end }}
{{- $seen := list }}
{{- range $i, $ref := (include "microservice.parentRefs" . | fromJsonArray) }}
{{- $key := toJson (list $ref.group $ref.kind $ref.name ($ref.namespace | default $namespace) ($ref.sectionName | default "") ($ref.port | default 0)) }}
{{- if has $key $seen }}
{{- fail (printf "parentRefs[%d]: %s %s is listed twice" $i $ref.kind $ref.name) }}
{{- end }}
{{- $seen = append $seen $key }}
{{- if and (eq $ref.kind "Service") (ne $ref.group "") }}
{{- fail (printf "parentRefs[%d].group: a Service parent (mesh traffic) is in the core group: write group: \"\" (not %q)" $i $ref.group) }}
{{- end }}
{{- end }}
{{- else if .Values.parentRefs }}
{{- fail "parentRefs: only for router gateway-api (router is istio: bind Istio gateways with gateways)" }}
{{- end }}
{{- if include "microservice.versionServices" . }}
{{- $template := .Values.versionService }}
{{- range (regexFindAll "\\{[^{}]*\\}" $template -1) }}
{{- if not (has . (list "{service}" "{version}")) }}
{{- fail (printf "versionService: unknown placeholder %s in %q: only {service} and {version}" . $template) }}
{{- end }}
{{- end }}
{{- if not (contains "{version}" $template) }}
{{- fail (printf "versionService: %q must contain {version}: each version needs its own Service" $template) }}
{{- end }}
{{- $names := dict }}
{{- range .Values.versions }}
{{- $name := include "microservice.versionServiceName" (list $ .name) }}
{{- if or (gt (len $name) 63) (not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" $name)) }}
{{- fail (printf "versionService: %q gives %q for version %s: not a Service name (a DNS label, at most 63 characters)" $template $name .name) }}
{{- end }}
{{- if hasKey $names $name }}
{{- fail (printf "versionService: %q gives %q for both %s and %s" $template $name (get $names $name) .name) }}
{{- end }}
{{- if eq $name $.Values.service }}
{{- fail (printf "versionService: %q gives %q for version %s: the name of the main Service" $template $name .name) }}
{{- end }}
{{- $_ := set $names $name .name }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Relative weights -> integer percentages summing to exactly 100, by largest remainder, the same
apportionment as Ramp's controller.weights.integer_percentages: every version gets
floor(weight * 100 / total); the leftover units go to the largest remainders (weight * 100 mod total),
ties to the version listed first. Integer arithmetic only. Output: a JSON list of
{"name": <version>, "percent": <int>} in the order of .Values.versions.
*/}}
{{- define "microservice.percentages" -}}
{{- $total := 0 }}
{{- range .Values.versions }}
{{- $total = add $total (int64 .weight) }}
{{- end }}
{{- $floors := list }}
{{- $remainders := list }}
{{- $assigned := 0 }}
{{- range .Values.versions }}
{{- $units := mul (int64 .weight) 100 }}
{{- $floors = append $floors (div $units $total) }}
{{- $remainders = append $remainders (mod $units $total) }}
{{- $assigned = add $assigned (div $units $total) }}
{{- end }}
{{- $leftover := sub 100 $assigned }}
{{- $result := list }}
{{- range $i, $version := .Values.versions }}
{{- $mine := index $remainders $i }}
{{- /* rank = how many versions come before this one in (remainder desc, position asc) order */}}
{{- $rank := 0 }}
{{- range $j, $other := $remainders }}
{{- if or (gt $other $mine) (and (eq $other $mine) (lt $j $i)) }}
{{- $rank = add1 $rank }}
{{- end }}
{{- end }}
{{- $percent := index $floors $i }}
{{- if lt $rank $leftover }}
{{- $percent = add1 $percent }}
{{- end }}
{{- $result = append $result (dict "name" $version.name "percent" $percent) }}
{{- end }}
{{- toJson $result }}
{{- end }}
