package discovery

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/proxycfg"
)

// The registry file source publishes the first snapshot, each rewrite,
// nothing for an unchanged file, and keeps the last good snapshot (with an
// error) when a rewrite is not a snapshot.
func TestFileSource(t *testing.T) {
	path := filepath.Join(t.TempDir(), "registry.json")
	var mu sync.Mutex
	var got []*catalog.Snapshot
	var errs []error
	src := &File{Path: path, Interval: 5 * time.Millisecond, OnError: func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- src.Run(ctx, func(s *catalog.Snapshot) {
			mu.Lock()
			got = append(got, s)
			mu.Unlock()
		})
	}()
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(got)
	}
	waitN := func(n int) {
		t.Helper()
		for count() < n {
			if ctx.Err() != nil {
				t.Fatalf("published %d snapshots, want %d", count(), n)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	snap := &catalog.Snapshot{Version: 1, Pods: []*catalog.RunningPod{{Pod: &catalog.Pod{Meta: catalog.Meta{Namespace: "web", Name: "a"}},
		IP: netip.MustParseAddr("10.200.0.2"), Ready: true}}}
	time.Sleep(20 * time.Millisecond) // a missing file is waited for, silently
	if err := WriteFile(path, snap); err != nil {
		t.Fatal(err)
	}
	waitN(1)
	if info, _ := os.Stat(path); info.Mode().Perm() != 0o600 {
		t.Errorf("registry mode = %v, want 0600", info.Mode().Perm())
	}
	if err := WriteFile(path, snap); err != nil { // same content
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if n := count(); n != 1 {
		t.Errorf("an unchanged rewrite published again (%d snapshots)", n)
	}
	// Replaced whole, as WriteFile does: a plain os.WriteFile truncates
	// first, and the poller may read the empty file in between.
	bad := path + ".bad"
	if err := os.WriteFile(bad, []byte(`{"Pods": [null]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(bad, path); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	mu.Lock()
	if len(got) != 1 || len(errs) == 0 || !strings.Contains(errs[0].Error(), "pods[0]") {
		t.Errorf("a bad rewrite: %d snapshots, errors %v; want the last good one kept and the error named", len(got), errs)
	}
	mu.Unlock()
	snap.Version = 2
	snap.Pods[0].Ready = false
	if err := WriteFile(path, snap); err != nil {
		t.Fatal(err)
	}
	waitN(2)
	mu.Lock()
	last := got[len(got)-1]
	mu.Unlock()
	if last.Version != 2 || last.Pods[0].Ready || last.Time.IsZero() {
		t.Errorf("second snapshot = version %d, ready %v, time %v; want version 2, not ready, the file's time", last.Version, last.Pods[0].Ready, last.Time)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run = %v", err)
	}
}

func TestDecodeRefusesHoles(t *testing.T) {
	for _, doc := range []string{`{"Pods": [null]}`, `{"Pods": [{}]}`, `{"Services": [null]}`, `{"Namespaces": [null]}`,
		`{"PeerAuthentications": [null]}`, `{"HTTPRoutes": [null]}`, `{"GRPCRoutes": [null]}`, `{"DestinationRules": [null]}`,
		`{"VirtualServices": [null]}`, `not json`} {
		if _, err := Decode([]byte(doc)); err == nil {
			t.Errorf("Decode(%s) = nil error, want one", doc)
		}
	}
	if _, err := Decode([]byte(`{"Version": 3}`)); err != nil {
		t.Errorf("Decode of an empty mesh: %v", err)
	}
}

// FuzzDecode: any registry content is a snapshot or an error, and a
// snapshot renders for any namespace without panicking.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"Version":1,"Services":[{"Name":"s","Namespace":"web","Selector":{"app":"a"},"ClusterIP":"10.201.0.1","Ports":[{"Name":"http","Protocol":"TCP","Port":80,"TargetPortName":"http"}]}],"Pods":[{"Pod":{"Name":"a","Namespace":"web","Labels":{"app":"a"},"Spec":{"ServiceAccount":"x"}},"IP":"10.200.0.2","Ready":true,"Sidecar":true}]}`))
	f.Add([]byte(`{"Services":[{"Annotations":{"networking.istio.io/exportTo":".,web"},"ClusterIP":"::1"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		snap, err := Decode(data)
		if err != nil {
			return
		}
		r := proxycfg.Render(snap, "cluster.local")
		for _, p := range snap.Pods {
			_, _ = proxycfg.ForPod(p, r, "cluster.local")
		}
		_ = r.For("web")
	})
}
