// Package controlclient is the proxy's side of configuration: it delivers
// validated ProxyConfigs (proto/trellis/v1) to the proxy and keeps serving
// the last good one when a new one is bad or the source is away. Today the
// source is a static file, watched for changes; the control plane's stream
// will be a second source with the same contract.
//
// The proxy imports it; it must stay free of control-plane packages.
package controlclient

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/trellis-mesh/trellis/internal/authn"
	"github.com/trellis-mesh/trellis/internal/authz"
	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/meshpb"
	"github.com/trellis-mesh/trellis/internal/route"
)

// Load reads and validates a ProxyConfig written as protobuf JSON.
func Load(path string) (*meshpb.ProxyConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load proxy config: %w", err)
	}
	return Decode(data, path)
}

// Decode parses and validates a ProxyConfig in protobuf JSON; name appears
// in errors. Unknown fields are errors, so a typo does not pass silently.
func Decode(data []byte, name string) (*meshpb.ProxyConfig, error) {
	cfg := &meshpb.ProxyConfig{}
	if err := protojson.Unmarshal(data, cfg); err != nil {
		return nil, fmt.Errorf("%s: not a ProxyConfig in protobuf JSON: %w", name, err)
	}
	if err := Validate(cfg); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return cfg, nil
}

// Validate checks what the proxy relies on; errors name the field.
func Validate(cfg *meshpb.ProxyConfig) error {
	if cfg.GetVersion() == "" {
		return errors.New("version is required")
	}
	if _, err := identity.Parse(cfg.GetWorkload().GetIdentity()); err != nil {
		return fmt.Errorf("workload.identity: %w", err)
	}
	if _, err := authz.Compile(authz.FromProto(cfg.GetAuthorization())); err != nil {
		return fmt.Errorf("authorization: %w", err)
	}
	if _, err := authn.Compile(authn.FromProto(cfg.GetAuthentication())); err != nil {
		return fmt.Errorf("authentication: %w", err)
	}
	if _, err := route.FromProto(cfg.GetRoutes()); err != nil {
		return fmt.Errorf("routes: %w", err)
	}
	seen := map[string]bool{}
	for i, s := range cfg.GetServices() {
		f := fmt.Sprintf("services[%d]", i)
		vip, err := netip.ParseAddr(s.GetVip())
		if err != nil {
			return fmt.Errorf("%s.vip %q is not an IP address", f, s.GetVip())
		}
		if err := validPolicy(s.GetTrafficPolicy()); err != nil {
			return fmt.Errorf("%s.traffic_policy.%w", f, err)
		}
		if err := validSubsets(s.GetSubsets()); err != nil {
			return fmt.Errorf("%s.%w", f, err)
		}
		for j, p := range s.GetPorts() {
			pf := fmt.Sprintf("%s.ports[%d]", f, j)
			if p.GetPort() == 0 || p.GetPort() > 65535 {
				return fmt.Errorf("%s.port %d is out of range 1-65535", pf, p.GetPort())
			}
			key := netip.AddrPortFrom(vip, uint16(p.GetPort())).String()
			if seen[key] {
				return fmt.Errorf("%s: %s is declared twice", pf, key)
			}
			seen[key] = true
			for k, e := range p.GetEndpoints() {
				ef := fmt.Sprintf("%s.endpoints[%d]", pf, k)
				if _, err := netip.ParseAddr(e.GetAddress()); err != nil {
					return fmt.Errorf("%s.address %q is not an IP address", ef, e.GetAddress())
				}
				if e.GetPort() == 0 || e.GetPort() > 65535 {
					return fmt.Errorf("%s.port %d is out of range 1-65535", ef, e.GetPort())
				}
				if id := e.GetIdentity(); id != "" {
					if _, err := identity.Parse(id); err != nil {
						return fmt.Errorf("%s.identity: %w", ef, err)
					}
				}
			}
		}
	}
	return nil
}

// validSubsets checks that each subset has a name of its own, which
// routes' backends name it by, and a policy validPolicy takes; at most
// catalog.MaxSubsets of them (a DestinationRule's most), each a balancer
// per port.
func validSubsets(subs []*meshpb.Subset) error {
	if len(subs) > catalog.MaxSubsets {
		return fmt.Errorf("subsets: %d, more than %d", len(subs), catalog.MaxSubsets)
	}
	seen := map[string]bool{}
	for i, sub := range subs {
		switch {
		case sub.GetName() == "":
			return fmt.Errorf("subsets[%d].name is required", i)
		case seen[sub.GetName()]:
			return fmt.Errorf("subsets[%d].name %q is declared twice", i, sub.GetName())
		}
		seen[sub.GetName()] = true
		if err := validPolicy(sub.GetTrafficPolicy()); err != nil {
			return fmt.Errorf("subsets[%d].traffic_policy.%w", i, err)
		}
	}
	return nil
}

// validPolicy checks what the proxy would otherwise read as something else
// than it says: an ejection of no time, a share above all or below none.
func validPolicy(tp *meshpb.TrafficPolicy) error {
	if rb := tp.GetRetryBudget(); rb != nil && !(rb.GetPercent() >= 0 && rb.GetPercent() <= 100) {
		return fmt.Errorf("retry_budget.percent %v is not a percentage from 0 to 100", rb.GetPercent())
	}
	od := tp.GetOutlierDetection()
	switch {
	case od == nil:
		return nil
	case od.GetBaseEjectionMs() == 0:
		return errors.New("outlier_detection.base_ejection_ms is 0: an ejection must last at least 1 ms")
	case od.GetMaxEjectionPercent() > 100:
		return fmt.Errorf("outlier_detection.max_ejection_percent %d is above 100", od.GetMaxEjectionPercent())
	}
	return nil
}

// FileSource watches a ProxyConfig file. Replacing the file (write and
// rename, as config tools do) or rewriting it both count as changes.
type FileSource struct {
	Path string
	// Interval between checks. Default 1 s.
	Interval time.Duration
	// OnUpdate receives each new valid config, on Run's goroutine.
	OnUpdate func(*meshpb.ProxyConfig)
	// OnError receives load and validation failures; the previous config
	// stays in force. Optional.
	OnError func(error)
}

// Run delivers the file's config now and after every change, until ctx is
// done. It returns nil then.
func (s *FileSource) Run(ctx context.Context) error {
	interval := s.Interval
	if interval <= 0 {
		interval = time.Second
	}
	var last []byte
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		data, err := os.ReadFile(s.Path)
		switch {
		case err != nil:
			s.fail(fmt.Errorf("load proxy config: %w", err))
		case !bytes.Equal(data, last):
			last = data
			cfg, err := Decode(data, s.Path)
			if err != nil {
				s.fail(err)
				break
			}
			s.OnUpdate(cfg)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

func (s *FileSource) fail(err error) {
	if s.OnError != nil {
		s.OnError(err)
	}
}
