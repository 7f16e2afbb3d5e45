package identity

import (
	"errors"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in      string
		wantErr error
	}{
		{"spiffe://cluster.local/ns/db/sa/alpha", nil},
		{"spiffe://example.org", nil},
		{"spiffe://td_1-x.y/a.b/C-d_e", nil},
		{"http://cluster.local/ns/db", ErrScheme},
		{"SPIFFE://cluster.local/x", ErrScheme},
		{"spiffe://Cluster.local/x", ErrTrustDomain},
		{"spiffe:///ns/db", ErrTrustDomain},
		{"spiffe://cluster.local/ns//db", ErrPath},
		{"spiffe://cluster.local/ns/db/", ErrPath},
		{"spiffe://cluster.local/ns/../sa", ErrPath},
		{"spiffe://cluster.local/ns/./sa", ErrPath},
		{"spiffe://cluster.local/ns/d%2Fb", ErrParts},
		{"spiffe://cluster.local:8443/ns/db", ErrParts},
		{"spiffe://user@cluster.local/ns/db", ErrParts},
		{"spiffe://cluster.local/ns/db?x=1", ErrParts},
		{"spiffe://cluster.local/ns/db#frag", ErrParts},
		{"spiffe://cluster.local/ns/d b", ErrPath},
	}
	for _, tt := range tests {
		id, err := Parse(tt.in)
		if !errors.Is(err, tt.wantErr) {
			t.Errorf("Parse(%q) error = %v, want %v", tt.in, err, tt.wantErr)
			continue
		}
		if err == nil && id.String() != tt.in {
			t.Errorf("Parse(%q).String() = %q, want it unchanged", tt.in, id)
		}
	}
}

func TestWorkload(t *testing.T) {
	id, err := ForWorkload("cluster.local", "db", "alpha")
	if err != nil {
		t.Fatal(err)
	}
	if id.String() != "spiffe://cluster.local/ns/db/sa/alpha" || id.URL().String() != id.String() {
		t.Errorf("ForWorkload() = %s (URL %s)", id, id.URL())
	}
	ns, sa, err := id.Workload()
	if ns != "db" || sa != "alpha" || err != nil {
		t.Errorf("Workload() = %q, %q, %v", ns, sa, err)
	}
	other, _ := Parse("spiffe://cluster.local/ns/db")
	if _, _, err := other.Workload(); !errors.Is(err, ErrNotWorkload) {
		t.Errorf("Workload() of %s error = %v, want ErrNotWorkload", other, err)
	}
	if _, err := ForWorkload("cluster.local", "d/b", "x"); err == nil {
		t.Error("ForWorkload with a slash in the namespace succeeded")
	}
}

// FuzzParse: Parse never panics, and what it accepts formats back to itself
// and parses again to the same ID.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"spiffe://cluster.local/ns/db/sa/alpha", "spiffe://a", "spiffe://a/b/../c", "spiffe://a/%2e"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := Parse(s)
		if err != nil {
			return
		}
		if id.String() != s {
			t.Fatalf("Parse(%q).String() = %q", s, id)
		}
		again, err := FromURI(id.URL())
		if err != nil || again != id {
			t.Fatalf("FromURI(URL(%q)) = %v, %v", s, again, err)
		}
	})
}
