package proxy

import (
	"fmt"
	"testing"
	"time"
)

// What a sidecar remembers of the access it let in stays bounded however
// a caller varies its paths and methods: per caller, past
// maxPathsPerCaller paths become one "*"; in all, past maxObserved kinds
// nothing new is kept and the overflow is counted.
func TestObservedAccessIsBounded(t *testing.T) {
	var o observedAccess
	now := time.Now()
	for i := range 1000 {
		o.record("cluster.local/ns/a/sa/x", "a", 8080, "GET", fmt.Sprintf("/items/%d", i), now)
	}
	o.record("cluster.local/ns/a/sa/x", "a", 8080, "GET", "/items/1", now)
	seen := o.list(time.Time{})
	if len(seen) != maxPathsPerCaller+1 {
		t.Fatalf("%d kinds kept for one caller's 1000 paths, want %d and a *", len(seen), maxPathsPerCaller)
	}
	counts := map[string]int64{}
	for _, s := range seen {
		counts[s.Path] = s.Count
	}
	if counts["*"] != 1000-maxPathsPerCaller || counts["/items/1"] != 2 {
		t.Errorf("counts: * %d, /items/1 %d; want %d and 2", counts["*"], counts["/items/1"], 1000-maxPathsPerCaller)
	}
	for i := range 100 {
		o.record("", "", 9000, fmt.Sprintf("M%d", i), "/", now) // a plaintext caller inventing methods
	}
	if n := len(o.list(time.Time{})); n != maxPathsPerCaller+1 {
		t.Errorf("made-up methods were kept: %d kinds", n)
	}
	for i := range 2 * maxObserved {
		o.record("", "", uint16(9000+i%2000), "GET", fmt.Sprintf("/%d", i), now) // and ports and paths
	}
	if n := len(o.list(time.Time{})); n != maxObserved {
		t.Errorf("%d kinds kept, want the cap %d", n, maxObserved)
	}
	if o.overflow.Load() == 0 {
		t.Error("the kinds past the cap were not counted as overflow")
	}
	if n := len(o.list(now.Add(time.Hour))); n != 0 {
		t.Errorf("%d kinds seen in a window after the last request, want none", n)
	}
}
