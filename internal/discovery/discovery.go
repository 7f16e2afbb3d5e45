// Package discovery holds the sources that turn a mesh's state into
// catalog snapshots for the control plane. Today: the registry file the
// one-host runtime keeps (File); Kubernetes informers will be a second
// Source with the same contract.
//
// The control plane imports it, and the one-host runtime for WriteFile.
package discovery

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/trellis-mesh/trellis/internal/catalog"
)

// Source publishes snapshots of a mesh. Run calls publish (on Run's
// goroutine) with the first complete snapshot and then after every change,
// each with a higher Version, until ctx is done; then it returns nil.
// publish must not block for long and must not modify the snapshot.
type Source interface {
	Run(ctx context.Context, publish func(*catalog.Snapshot)) error
}

// File is the registry file: a catalog.Snapshot as JSON, replaced whole
// (write, then rename) by its one writer. The snapshot's Time is the
// file's modification time.
type File struct {
	Path string
	// Interval between checks for a new file (a stat each). Default 5 ms.
	Interval time.Duration
	// OnError receives read and decode failures; the last good snapshot
	// stays in force. Optional.
	OnError func(error)
}

var _ Source = (*File)(nil)

// Run implements Source. A missing file is waited for.
func (f *File) Run(ctx context.Context, publish func(*catalog.Snapshot)) error {
	interval := f.Interval
	if interval <= 0 {
		interval = 5 * time.Millisecond
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var lastStat os.FileInfo
	var last []byte
	var lastErr string
	for {
		st, err := os.Stat(f.Path)
		if err == nil && (lastStat == nil || !os.SameFile(st, lastStat) || !st.ModTime().Equal(lastStat.ModTime()) || st.Size() != lastStat.Size()) {
			var data []byte
			if data, err = os.ReadFile(f.Path); err == nil && !bytes.Equal(data, last) {
				var snap *catalog.Snapshot
				if snap, err = Decode(data); err == nil {
					snap.Time = st.ModTime()
					publish(snap)
					last, lastStat = data, st
				}
			} else if err == nil {
				lastStat = st
			}
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) && err.Error() != lastErr && f.OnError != nil {
			f.OnError(fmt.Errorf("registry %s: %w", f.Path, err))
		}
		lastErr = ""
		if err != nil {
			lastErr = err.Error()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// Decode parses a registry file's content.
func Decode(data []byte) (*catalog.Snapshot, error) {
	snap := &catalog.Snapshot{}
	if err := json.Unmarshal(data, snap); err != nil {
		return nil, fmt.Errorf("not a registry snapshot: %w", err)
	}
	for i, p := range snap.Pods {
		if p == nil || p.Pod == nil {
			return nil, fmt.Errorf("pods[%d] has no pod", i)
		}
	}
	for i, s := range snap.Services {
		if s == nil {
			return nil, fmt.Errorf("services[%d] is null", i)
		}
	}
	for i, ns := range snap.Namespaces {
		if ns == nil {
			return nil, fmt.Errorf("namespaces[%d] is null", i)
		}
	}
	for i, pa := range snap.PeerAuthentications {
		if pa == nil {
			return nil, fmt.Errorf("peerAuthentications[%d] is null", i)
		}
	}
	for i, ap := range snap.AuthorizationPolicies {
		if ap == nil {
			return nil, fmt.Errorf("authorizationPolicies[%d] is null", i)
		}
	}
	for i, ra := range snap.RequestAuthentications {
		if ra == nil {
			return nil, fmt.Errorf("requestAuthentications[%d] is null", i)
		}
	}
	for i, r := range snap.HTTPRoutes {
		if r == nil {
			return nil, fmt.Errorf("httpRoutes[%d] is null", i)
		}
	}
	for i, r := range snap.GRPCRoutes {
		if r == nil {
			return nil, fmt.Errorf("grpcRoutes[%d] is null", i)
		}
	}
	for i, dr := range snap.DestinationRules {
		if dr == nil {
			return nil, fmt.Errorf("destinationRules[%d] is null", i)
		}
	}
	for i, vs := range snap.VirtualServices {
		if vs == nil {
			return nil, fmt.Errorf("virtualServices[%d] is null", i)
		}
	}
	return snap, nil
}

// WriteFile replaces the registry file at path with snap (mode 0600: it
// holds token hashes), atomically.
func WriteFile(path string, snap *catalog.Snapshot) error {
	data, err := json.Marshal(snap)
	if err != nil {
		return fmt.Errorf("encode registry: %w", err)
	}
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("write registry: %w", err)
	}
	return os.Rename(tmp, path)
}
