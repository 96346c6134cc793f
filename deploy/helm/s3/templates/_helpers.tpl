{{/* Names ---------------------------------------------------------------------------------------- */}}

{{- define "s3.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-s3, or the release name alone when it already contains the chart name. */}}
{{- define "s3.fullname" -}}
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

{{/* (dict "root" $ "component" "retriever") -> <fullname>-retriever; with "shard" "2" -> <fullname>-retriever-2 */}}
{{- define "s3.componentName" -}}
{{- $shard := toString (get . "shard" | default "") }}
{{- if $shard }}
{{- $suffix := printf "-%s" $shard }}
{{- printf "%s-%s" (include "s3.fullname" .root) .component | trunc (int (sub 63 (len $suffix))) | trimSuffix "-" }}{{ $suffix }}
{{- else }}
{{- printf "%s-%s" (include "s3.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "s3.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The five services, in start-up order. */}}
{{- define "s3.components" -}}
retriever generator searcher learner controller
{{- end }}

{{/* (dict "root" $ "component" NAME) -> the shard numbers of a component, "0 1 2 3", or "" when it is not
sharded (every component but a retriever with retriever.shards > 1).  Each shard is its own Deployment, Service,
PDB, NetworkPolicy and ServiceMonitor, named <fullname>-<component>-<shard> and labelled s3-platform/shard. */}}
{{- define "s3.shardList" -}}
{{- $n := 1 }}
{{- if eq .component "retriever" }}{{ $n = int (.root.Values.retriever.shards | default 1) }}{{ end }}
{{- if gt $n 1 }}{{ range $i := until $n }}{{ if $i }} {{ end }}{{ $i }}{{ end }}{{ end }}
{{- end }}

{{/* (dict "root" $ "index" DIR "shard" "2") -> DIR/shard-00002-of-00004, the directory `s3 index build --shards N`
writes for shard i; DIR itself when not sharded. */}}
{{- define "s3.shardDir" -}}
{{- $dir := include "s3.dataPath" (dict "root" .root "path" .index) }}
{{- $shard := toString (get . "shard" | default "") }}
{{- if $shard }}
{{- printf "%s/shard-%05d-of-%05d" ($dir | trimSuffix "/") (int $shard) (int .root.Values.retriever.shards) }}
{{- else }}
{{- $dir }}
{{- end }}
{{- end }}

{{/* Labels ------------------------------------------------------------------------------------------ */}}

{{/* (dict "root" $ "component" NAME ["shard" "i"]) */}}
{{- define "s3.selectorLabels" -}}
app.kubernetes.io/name: {{ include "s3.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- with toString (get . "shard" | default "") }}
s3-platform/shard: {{ . | quote }}
{{- end }}
{{- end }}

{{/* (dict "root" $ "component" NAME) */}}
{{- define "s3.labels" -}}
helm.sh/chart: {{ include "s3.chart" .root }}
{{ include "s3.selectorLabels" . }}
app.kubernetes.io/part-of: s3
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Images ------------------------------------------------------------------------------------------ */}}

{{/* (dict "root" $ "spec" COMPONENT-VALUES) -> repository:tag of the component's image. */}}
{{- define "s3.image" -}}
{{- $v := .root.Values }}
{{- $tag := $v.image.tag | default .root.Chart.AppVersion }}
{{- $repo := $v.image.repository }}
{{- if eq (.spec.imageVariant | default "cpu") "cuda" }}
{{- $repo = $v.cudaImage.repository }}
{{- $tag = $v.cudaImage.tag | default $tag }}
{{- end }}
{{- with .spec.image }}
{{- $repo = .repository | default $repo }}
{{- $tag = .tag | default $tag }}
{{- end }}
{{- printf "%s:%s" $repo (toString $tag) }}
{{- end }}

{{/* Secrets and addresses --------------------------------------------------------------------------- */}}

{{- define "s3.authSecretName" -}}
{{- .Values.auth.existingSecret | default (printf "%s-auth" (include "s3.fullname" .)) }}
{{- end }}

{{- define "s3.authSecretKey" -}}
{{- if .Values.auth.existingSecret }}{{ .Values.auth.existingSecretKey }}{{ else }}token{{ end }}
{{- end }}

{{/* The Secret holding the job store / baseline cache URL (key: s3.redisSecretKey). */}}
{{- define "s3.redisSecretName" -}}
{{- if and (not .Values.redis.enabled) .Values.redis.external.existingSecret }}
{{- .Values.redis.external.existingSecret }}
{{- else }}
{{- printf "%s-redis" (include "s3.fullname" .) }}
{{- end }}
{{- end }}

{{- define "s3.redisSecretKey" -}}
{{- if and (not .Values.redis.enabled) .Values.redis.external.existingSecret }}{{ .Values.redis.external.existingSecretKey }}{{ else }}url{{ end }}
{{- end }}

{{/* (dict "root" $ "component" NAME ["shard" "i"]) -> <service>:<grpc port> */}}
{{- define "s3.address" -}}
{{- $spec := index .root.Values .component }}
{{- printf "%s:%v" (include "s3.componentName" .) $spec.ports.grpc }}
{{- end }}

{{/* The retriever address clients are given: <fullname>-retriever:PORT, or with retriever.shards > 1 the
comma-separated shard addresses <fullname>-retriever-0:PORT,...,<fullname>-retriever-N-1:PORT (the clients fan a
search out to every shard and merge the ranked lists). */}}
{{- define "s3.retrieverAddress" -}}
{{- $root := . }}
{{- $out := list }}
{{- range $shard := splitList " " (include "s3.shardList" (dict "root" $root "component" "retriever")) }}
{{- $out = append $out (include "s3.address" (dict "root" $root "component" "retriever" "shard" $shard)) }}
{{- end }}
{{- join "," $out }}
{{- end }}

{{- define "s3.jobsNamespace" -}}
{{- .Values.controller.jobs.namespace | default .Release.Namespace }}
{{- end }}

{{- define "s3.jobServiceAccountName" -}}
{{- .Values.controller.jobs.serviceAccount.name | default (printf "%s-job" (include "s3.fullname" .)) }}
{{- end }}

{{- define "s3.controllerServiceAccountName" -}}
{{- if .Values.controller.serviceAccount.create }}
{{- .Values.controller.serviceAccount.name | default (printf "%s-controller" (include "s3.fullname" .)) }}
{{- else }}
{{- .Values.controller.serviceAccount.name | default "default" }}
{{- end }}
{{- end }}

{{/* (dict "root" $ "volume" "data") -> the claim name of a shared volume */}}
{{- define "s3.claimName" -}}
{{- $p := index .root.Values.persistence .volume }}
{{- $p.existingClaim | default (printf "%s-%s" (include "s3.fullname" .root) .volume) }}
{{- end }}

{{/* Pod pieces -------------------------------------------------------------------------------------- */}}

{{/* (dict "root" $ "component" NAME "spec" VALUES "port" N "timing" PROBE-VALUES) */}}
{{- define "s3.grpcProbe" -}}
grpc:
  port: {{ .port }}
  service: ""
{{- with .timing }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Liveness: the HTTP side-server's /livez, 200 whenever the process answers: it asks nothing of the model,
Redis or another service, and needs no token (S3_AUTH_METRICS protects /metrics only).  (dict "http" PORT
"timing" T) */}}
{{- define "s3.livenessProbe" -}}
httpGet:
  path: /livez
  port: {{ .http }}
{{- with .timing }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "s3.httpProbe" -}}
httpGet:
  path: /healthz
  port: {{ .http }}
{{- with .timing }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* (dict "root" $ "path" P) -> P when absolute, else under the data volume's mount path */}}
{{- define "s3.dataPath" -}}
{{- if hasPrefix "/" .path }}{{ .path }}{{ else }}{{ printf "%s/%s" (.root.Values.persistence.data.mountPath | trimSuffix "/") .path }}{{ end }}
{{- end }}

{{/* The service-specific flags of each component (the common ones are in deployment.yaml). */}}
{{- define "s3.args.retriever" -}}
{{- $root := .root }}
{{- $shard := get . "shard" | default "" }}
{{- range .spec.indexes }}
- --index={{ include "s3.shardDir" (dict "root" $root "index" . "shard" $shard) }}
{{- end }}
{{- if .spec.threads }}
- --threads={{ .spec.threads }}
{{- end }}
{{- end }}

{{- define "s3.args.generator" -}}
- --backend={{ .spec.backend }}
{{- if .root.Values.vllmServer.enabled }}
{{- /* in front of the chart's vLLM OpenAI server: its Service, and the name it serves the model under */}}
- --model={{ include "s3.vllmServedModel" .root }}
- --base-url={{ .spec.baseUrl | default (include "s3.vllmServerUrl" .root) }}
{{- else }}
- --model={{ .spec.model }}
{{- with .spec.baseUrl }}
- --base-url={{ . }}
{{- end }}
{{- end }}
- --model-cache={{ .root.Values.persistence.models.mountPath | trimSuffix "/" }}/s3
{{- end }}

{{/* The model name the vLLM OpenAI server answers to (vllmServer.servedModelName, default its model). */}}
{{- define "s3.vllmServedModel" -}}
{{- .Values.vllmServer.servedModelName | default .Values.vllmServer.model }}
{{- end }}

{{/* The OpenAI API base URL of the chart's vLLM server: http://<fullname>-vllm:PORT/v1 */}}
{{- define "s3.vllmServerUrl" -}}
{{- printf "http://%s:%v/v1" (include "s3.componentName" (dict "root" . "component" "vllm")) .Values.vllmServer.port }}
{{- end }}

{{- define "s3.args.searcher" -}}
- --retriever={{ include "s3.retrieverAddress" .root }}
- --backend={{ .spec.backend }}
- --model={{ .spec.model }}
- --model-cache={{ .root.Values.persistence.models.mountPath | trimSuffix "/" }}/s3
{{- with .spec.baseUrl }}
- --base-url={{ . }}
{{- end }}
{{- if .spec.threads }}
- --threads={{ .spec.threads }}
{{- end }}
{{- if .spec.maxBatchSize }}
- --max-batch-size={{ .spec.maxBatchSize }}
{{- end }}
{{- end }}

{{- define "s3.args.learner" -}}
- --checkpoint-dir={{ .root.Values.persistence.checkpoints.mountPath }}
{{- with .spec.model }}
- --model={{ . }}
{{- end }}
{{- with .spec.algorithm }}
- --algorithm={{ . }}
{{- end }}
{{- with .spec.device }}
- --device={{ . }}
{{- end }}
{{- if .spec.threads }}
- --threads={{ .spec.threads }}
{{- end }}
{{- if not .spec.resume }}
- --no-resume
{{- end }}
{{- end }}

{{- define "s3.args.controller" -}}
{{- $root := .root }}
{{- $spec := .spec }}
- --redis-url=$(S3_REDIS_URL)
- --namespace={{ $spec.storeNamespace }}
- --backend={{ $spec.backend }}
- --max-running={{ $spec.maxRunning }}
- --heartbeat-interval={{ $spec.heartbeatInterval }}
- --heartbeat-timeout={{ $spec.heartbeatTimeout }}
- --start-timeout={{ $spec.startTimeout }}
- --cancel-grace={{ $spec.cancelGrace }}
- --reconcile-interval={{ $spec.reconcileInterval }}
{{- if eq $spec.backend "local" }}
- --state-dir=/tmp/s3
{{- if $spec.workerThreads }}
- --worker-threads={{ $spec.workerThreads }}
{{- end }}
{{- else }}
- --k8s-namespace={{ include "s3.jobsNamespace" $root }}
- --k8s-image={{ include "s3.image" (dict "root" $root "spec" $spec.jobs) }}
- --k8s-redis-secret={{ include "s3.redisSecretName" $root }}:{{ include "s3.redisSecretKey" $root }}
{{- if $root.Values.auth.enabled }}
- --k8s-auth-secret={{ include "s3.authSecretName" $root }}:{{ include "s3.authSecretKey" $root }}
{{- end }}
{{- if $root.Values.tls.enabled }}
- --k8s-tls-secret={{ $root.Values.tls.existingSecret }}
{{- if $root.Values.tls.clientAuth }}
- --k8s-tls-client-auth
{{- end }}
{{- end }}
- --k8s-service-account={{ include "s3.jobServiceAccountName" $root }}
{{- end }}
{{- end }}

{{/* Which shared volumes each component mounts: (dict "root" $ "component" NAME) -> "models data ..." */}}
{{- define "s3.volumesOf" -}}
{{- $c := .component }}
{{- if eq $c "retriever" }}models data
{{- else if eq $c "generator" }}models
{{- else if eq $c "searcher" }}models checkpoints
{{- else if eq $c "learner" }}models checkpoints
{{- else if and (eq $c "controller") (eq .root.Values.controller.backend "local") }}models data checkpoints
{{- end }}
{{- end }}

{{/* The Redis password: the value, else the live Secret's, else a new random one (kept by upgrades). */}}
{{- define "s3.redisPassword" -}}
{{- if .Values.redis.auth.password }}
{{- .Values.redis.auth.password }}
{{- else }}
{{- $live := lookup "v1" "Secret" .Release.Namespace (printf "%s-redis" (include "s3.fullname" .)) }}
{{- if and $live $live.data (hasKey $live.data "password") }}
{{- index $live.data "password" | b64dec }}
{{- else }}
{{- /* one random value per render: cached in a dict on the root context */}}
{{- if not (hasKey .Values.redis.auth "_generated") }}
{{- $_ := set .Values.redis.auth "_generated" (randAlphaNum 32) }}
{{- end }}
{{- .Values.redis.auth._generated }}
{{- end }}
{{- end }}
{{- end }}

{{/* NetworkPolicy peers that are "the platform": this release's pods and the controller's job pods
(labelled app.kubernetes.io/name=s3-job by the kubernetes backend, or by deploy/examples). */}}
{{- define "s3.platformPeers" -}}
- podSelector:
    matchLabels:
      app.kubernetes.io/instance: {{ .Release.Name }}
      app.kubernetes.io/part-of: s3
- podSelector:
    matchLabels:
      app.kubernetes.io/name: s3-job
      app.kubernetes.io/part-of: s3
  {{- $jobsNs := include "s3.jobsNamespace" . }}
  {{- if ne $jobsNs .Release.Namespace }}
  namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ $jobsNs }}
  {{- end }}
{{- end }}

{{/* toYaml for files Python reads: Go writes 1e-06 for 0.000001, which YAML 1.1 (PyYAML, s3core.config) reads
as a string; a mantissa with a dot (1.0e-06) is a float in both. */}}
{{- define "s3.toYaml" -}}
{{- regexReplaceAll "(?m)^(\\s*(?:[^\\s:#][^:#]*:|-)\\s+)(-?[0-9]+)([eE][-+][0-9]+)$" (toYaml .) "${1}${2}.0${3}" }}
{{- end }}

{{/* A map without its null entries, one level down too (resources.requests / .limits): a values file layered
on another removes a key with null (values-vllm-server.yaml drops the GPU profile's nvidia.com/gpu and GPU node
label from the generator); Helm keeps nulls from -f files, so the chart drops them.  MAP -> YAML ("" = empty). */}}
{{- define "s3.dropNulls" -}}
{{- $out := dict }}
{{- range $k, $v := . }}
{{- if kindIs "map" $v }}
{{- $inner := dict }}
{{- range $ik, $iv := $v }}{{ if not (kindIs "invalid" $iv) }}{{ $_ := set $inner $ik $iv }}{{ end }}{{ end }}
{{- $_ := set $out $k $inner }}
{{- else if not (kindIs "invalid" $v) }}
{{- $_ := set $out $k $v }}
{{- end }}
{{- end }}
{{- if $out }}{{ toYaml $out }}{{ end }}
{{- end }}

{{/* Scheduling ---------------------------------------------------------------------------------------- */}}

{{/* A label selector of a spread constraint or pod (anti-)affinity term, scoped to this release: a selector that
picks platform pods by app.kubernetes.io/component (as the profiles' do) gets app.kubernetes.io/instance too, so two
releases in one namespace neither spread against nor attract each other's pods.  Selectors of anything else are
left as they are.  (dict "root" $ "selector" SELECTOR) -> nothing; SELECTOR is changed in place. */}}
{{- define "s3.scopeSelector" -}}
{{- $ml := .selector.matchLabels | default dict }}
{{- if and (hasKey $ml "app.kubernetes.io/component") (not (hasKey $ml "app.kubernetes.io/instance")) }}
{{- $_ := set $ml "app.kubernetes.io/instance" .root.Release.Name }}
{{- $_ := set .selector "matchLabels" $ml }}
{{- end }}
{{- end }}

{{/* (dict "root" $ "spec" COMPONENT-VALUES) -> the pod's affinity as YAML ("" = none): spec.affinity with its
pod (anti-)affinity selectors scoped to the release, and the GPU node requirements of spec.gpuNode (GPU feature
discovery's labels: nvidia.com/gpu.count, nvidia.com/gpu.memory in MiB, optionally nvidia.com/gpu.product) added to
every required node selector term (terms are ORed, so each must carry them). */}}
{{- define "s3.affinity" -}}
{{- $root := .root }}
{{- $aff := deepCopy (.spec.affinity | default dict) }}
{{- range $kind := list "podAffinity" "podAntiAffinity" }}
{{- with index $aff $kind }}
{{- range (get . "requiredDuringSchedulingIgnoredDuringExecution" | default list) }}
{{- with .labelSelector }}{{ include "s3.scopeSelector" (dict "root" $root "selector" .) }}{{ end }}
{{- end }}
{{- range (get . "preferredDuringSchedulingIgnoredDuringExecution" | default list) }}
{{- with (.podAffinityTerm | default dict).labelSelector }}{{ include "s3.scopeSelector" (dict "root" $root "selector" .) }}{{ end }}
{{- end }}
{{- end }}
{{- end }}
{{- $g := .spec.gpuNode | default dict }}
{{- $exprs := list }}
{{- if gt (int ($g.minCount | default 0)) 1 }}
{{- $exprs = append $exprs (dict "key" "nvidia.com/gpu.count" "operator" "Gt" "values" (list (toString (sub (int $g.minCount) 1)))) }}
{{- end }}
{{- if gt (int ($g.minMemoryMiB | default 0)) 0 }}
{{- $exprs = append $exprs (dict "key" "nvidia.com/gpu.memory" "operator" "Gt" "values" (list (toString (sub (int $g.minMemoryMiB) 1)))) }}
{{- end }}
{{- with $g.products }}
{{- $exprs = append $exprs (dict "key" "nvidia.com/gpu.product" "operator" "In" "values" .) }}
{{- end }}
{{- if $exprs }}
{{- $na := get $aff "nodeAffinity" | default dict }}
{{- $req := get $na "requiredDuringSchedulingIgnoredDuringExecution" | default dict }}
{{- $terms := get $req "nodeSelectorTerms" | default list }}
{{- if not $terms }}{{ $terms = list (dict) }}{{ end }}
{{- $out := list }}
{{- range $terms }}
{{- $t := deepCopy . }}
{{- $_ := set $t "matchExpressions" (concat (get $t "matchExpressions" | default list) $exprs) }}
{{- $out = append $out $t }}
{{- end }}
{{- $_ := set $req "nodeSelectorTerms" $out }}
{{- $_ := set $na "requiredDuringSchedulingIgnoredDuringExecution" $req }}
{{- $_ := set $aff "nodeAffinity" $na }}
{{- end }}
{{- if $aff }}{{ toYaml $aff }}{{ end }}
{{- end }}

{{/* (dict "root" $ "spec" VALUES) -> spec.topologySpreadConstraints as YAML, selectors scoped to the release. */}}
{{- define "s3.spread" -}}
{{- $root := .root }}
{{- $out := deepCopy (.spec.topologySpreadConstraints | default list) }}
{{- range $out }}
{{- with .labelSelector }}{{ include "s3.scopeSelector" (dict "root" $root "selector" .) }}{{ end }}
{{- end }}
{{- if $out }}{{ toYaml $out }}{{ end }}
{{- end }}
