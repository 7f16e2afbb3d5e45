package nodeagent

// The agent against the real kernel and a real mesh is tested end to end in
// internal/cli (conformance tables, restarts, repair of hand edits).

import "testing"

func TestParseCounterName(t *testing.T) {
	tests := []struct {
		name, dir, ns, policy string
		ok                    bool
	}{
		{"in.db.mesh-members-only", "ingress", "db", "mesh-members-only", true},
		{"out.x.deny-all", "egress", "x", "deny-all", true},
		{"in.db", "", "", "", false},
		{"sideways.db.p", "", "", "", false},
	}
	for _, tt := range tests {
		dir, ns, policy, ok := ParseCounterName(tt.name)
		if dir != tt.dir || ns != tt.ns || policy != tt.policy || ok != tt.ok {
			t.Errorf("ParseCounterName(%q) = %q, %q, %q, %v; want %q, %q, %q, %v",
				tt.name, dir, ns, policy, ok, tt.dir, tt.ns, tt.policy, tt.ok)
		}
	}
}

func TestNewNeedsASource(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Error("New(Config{}) = nil error, want one about the missing source")
	}
	a, err := New(Config{Source: nopSource{}})
	if err != nil || a.cfg.Table != "trellis-netpol" || a.cfg.Resync <= 0 {
		t.Errorf("New() defaults = %+v, %v", a.cfg, err)
	}
}

type nopSource struct{ Source }
