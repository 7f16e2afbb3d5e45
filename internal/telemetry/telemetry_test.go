package telemetry

import "testing"

func TestCanonicalNames(t *testing.T) {
	tests := []struct {
		labels            map[string]string
		service, revision string
	}{
		{map[string]string{"service.istio.io/canonical-name": "c", "app.kubernetes.io/name": "k", "app": "a",
			"service.istio.io/canonical-revision": "r1", "app.kubernetes.io/version": "k1", "version": "v1"}, "c", "r1"},
		{map[string]string{"app.kubernetes.io/name": "k", "app": "a", "app.kubernetes.io/version": "k1", "version": "v1"}, "k", "k1"},
		{map[string]string{"app": "a", "version": "v1"}, "a", "v1"},
		{nil, "frontend", "latest"},
	}
	for _, tt := range tests {
		p := PeerFromLabels("frontend", "web", "spiffe://td/ns/web/sa/default", tt.labels)
		if p.CanonicalService != tt.service || p.CanonicalRevision != tt.revision {
			t.Errorf("PeerFromLabels(%v) = %s/%s, want %s/%s", tt.labels, p.CanonicalService, p.CanonicalRevision, tt.service, tt.revision)
		}
	}
}
