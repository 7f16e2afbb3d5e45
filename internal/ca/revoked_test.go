package ca

import (
	"slices"
	"testing"
	"time"
)

func TestRevocations(t *testing.T) {
	r := &Revocations{TTL: time.Hour, Max: 2}
	t0 := time.Now()
	step := func(at time.Duration, running []string, want []string, wantChanged bool) {
		t.Helper()
		got, changed := r.Observe(running, t0.Add(at))
		if !slices.Equal(got, want) || changed != wantChanged {
			t.Errorf("at %v running %v: list %v changed %v, want %v %v", at, running, got, changed, want, wantChanged)
		}
	}
	step(0, []string{"a", "b", "c", "d"}, nil, false)
	step(time.Minute, []string{"b", "c", "d"}, []string{"a"}, true)         // a deleted
	step(2*time.Minute, []string{"b", "c", "d"}, []string{"a"}, false)      // nothing new
	step(3*time.Minute, []string{"d"}, []string{"b", "c"}, true)            // over Max: a, closest to expiry, goes
	step(3*time.Minute+time.Hour, []string{"d"}, nil, true)                 // b and c expired
	step(4*time.Minute+time.Hour, []string{"d", "a-again", ""}, nil, false) // new pods; an empty UID is no pod
	if r.Dropped() != 1 || r.Has("") || r.Len() != 0 {
		t.Errorf("dropped %d, has(\"\") %v, len %d; want 1, false, 0", r.Dropped(), r.Has(""), r.Len())
	}
}
