{{- define "trellis.image" -}}
{{ .root.Values.image.repository }}/{{ .name }}:{{ .root.Values.image.tag | default .root.Chart.AppVersion }}
{{- end -}}
{{- define "trellis.labels" -}}
app.kubernetes.io/part-of: trellis
{{- end -}}
