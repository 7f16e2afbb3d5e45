// Package manifest reads ordinary Kubernetes manifests (YAML or JSON, one file
// with several documents or a directory of files) into catalog objects, and
// validates a set of them as a whole before anything is started.
//
// It is the one-host mode's front door: the CLI and the one-host runtime
// import it. Kubernetes API types are used only to decode; callers see
// catalog types. Every error names the file, the object and the field.
package manifest

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/trellis-mesh/trellis/internal/catalog"
)

// Source is one manifest file's name and content. Name appears in errors.
type Source struct {
	Name string
	Data []byte
}

// ReadPaths reads each path: a file as is, a directory as its *.yaml, *.yml
// and *.json files in name order (not recursive).
func ReadPaths(paths []string) ([]Source, error) {
	var out []Source
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("read manifests: %w", err)
		}
		if !st.IsDir() {
			data, err := os.ReadFile(p)
			if err != nil {
				return nil, fmt.Errorf("read manifests: %w", err)
			}
			out = append(out, Source{Name: p, Data: data})
			continue
		}
		entries, err := os.ReadDir(p)
		if err != nil {
			return nil, fmt.Errorf("read manifests: %w", err)
		}
		var found bool
		for _, e := range entries {
			ext := filepath.Ext(e.Name())
			if e.IsDir() || (ext != ".yaml" && ext != ".yml" && ext != ".json") {
				continue
			}
			fp := filepath.Join(p, e.Name())
			data, err := os.ReadFile(fp)
			if err != nil {
				return nil, fmt.Errorf("read manifests: %w", err)
			}
			out = append(out, Source{Name: fp, Data: data})
			found = true
		}
		if !found {
			return nil, fmt.Errorf("read manifests: directory %s holds no .yaml, .yml or .json file", p)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("read manifests: no file given; pass -f FILE or -f DIR")
	}
	return out, nil
}

// Set is a collection of objects keyed by Ref. The zero value is empty and
// ready to use. A Set is not safe for concurrent mutation.
type Set struct {
	objects map[catalog.Ref]any
	origin  map[catalog.Ref]string // file each object came from
}

// Put adds or replaces obj, recording the file it came from.
func (s *Set) Put(ref catalog.Ref, obj any, file string) {
	if s.objects == nil {
		s.objects = make(map[catalog.Ref]any)
		s.origin = make(map[catalog.Ref]string)
	}
	s.objects[ref] = obj
	s.origin[ref] = file
}

// Delete removes ref and reports whether it was there.
func (s *Set) Delete(ref catalog.Ref) bool {
	if _, ok := s.objects[ref]; !ok {
		return false
	}
	delete(s.objects, ref)
	delete(s.origin, ref)
	return true
}

// Get returns the object for ref, or nil.
func (s *Set) Get(ref catalog.Ref) any { return s.objects[ref] }

// Origin returns the file ref came from, or "".
func (s *Set) Origin(ref catalog.Ref) string { return s.origin[ref] }

// Refs returns every ref in a stable order: by kind, namespace, name.
func (s *Set) Refs() []catalog.Ref {
	refs := make([]catalog.Ref, 0, len(s.objects))
	for r := range s.objects {
		refs = append(refs, r)
	}
	sort.Slice(refs, func(i, j int) bool {
		a, b := refs[i], refs[j]
		if a.Kind != b.Kind {
			return kindOrder(a.Kind) < kindOrder(b.Kind)
		}
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		return a.Name < b.Name
	})
	return refs
}

// Clone returns a shallow copy: objects are shared, the index is not.
func (s *Set) Clone() *Set {
	c := &Set{}
	for r, o := range s.objects {
		c.Put(r, o, s.origin[r])
	}
	return c
}

// Merge puts every object of other into s, replacing objects with the same
// Ref: the semantics of kubectl apply.
func (s *Set) Merge(other *Set) {
	for r, o := range other.objects {
		s.Put(r, o, other.origin[r])
	}
}

// Namespaces returns the namespaces in name order.
func (s *Set) Namespaces() []*catalog.Namespace { return collect[*catalog.Namespace](s) }

// ServiceAccounts returns the service accounts in namespace/name order.
func (s *Set) ServiceAccounts() []*catalog.ServiceAccount {
	return collect[*catalog.ServiceAccount](s)
}

// Pods returns the pods declared directly (not those of Deployments).
func (s *Set) Pods() []*catalog.Pod { return collect[*catalog.Pod](s) }

// Deployments returns the deployments in namespace/name order.
func (s *Set) Deployments() []*catalog.Deployment { return collect[*catalog.Deployment](s) }

// NetworkPolicies returns the network policies in namespace/name order.
func (s *Set) NetworkPolicies() []*catalog.NetworkPolicy { return collect[*catalog.NetworkPolicy](s) }

// PeerAuthentications returns the peer authentication policies.
func (s *Set) PeerAuthentications() []*catalog.PeerAuthentication {
	return collect[*catalog.PeerAuthentication](s)
}

// AuthorizationPolicies returns the authorization policies.
func (s *Set) AuthorizationPolicies() []*catalog.AuthorizationPolicy {
	return collect[*catalog.AuthorizationPolicy](s)
}

// RequestAuthentications returns the JWT policies.
func (s *Set) RequestAuthentications() []*catalog.RequestAuthentication {
	return collect[*catalog.RequestAuthentication](s)
}

// HTTPRoutes returns the HTTPRoutes in namespace/name order, valid or
// not (internal/route says which are).
func (s *Set) HTTPRoutes() []*catalog.HTTPRoute { return collect[*catalog.HTTPRoute](s) }

// GRPCRoutes returns the GRPCRoutes in namespace/name order.
func (s *Set) GRPCRoutes() []*catalog.GRPCRoute { return collect[*catalog.GRPCRoute](s) }

// DestinationRules returns the DestinationRules in namespace/name order.
func (s *Set) DestinationRules() []*catalog.DestinationRule {
	return collect[*catalog.DestinationRule](s)
}

// VirtualServices returns the VirtualServices in namespace/name order,
// valid or not (internal/route says what each applies).
func (s *Set) VirtualServices() []*catalog.VirtualService {
	return collect[*catalog.VirtualService](s)
}

// Services returns the services in namespace/name order.
func (s *Set) Services() []*catalog.Service { return collect[*catalog.Service](s) }

func collect[T any](s *Set) []T {
	var out []T
	for _, r := range s.Refs() {
		if o, ok := s.objects[r].(T); ok {
			out = append(out, o)
		}
	}
	return out
}

// kindOrder is the order objects are listed and created in: what others
// depend on first.
func kindOrder(k catalog.Kind) int {
	for i, kk := range []catalog.Kind{catalog.KindNamespace, catalog.KindServiceAccount,
		catalog.KindService, catalog.KindDeployment, catalog.KindPod, catalog.KindNetworkPolicy, catalog.KindPeerAuthentication,
		catalog.KindAuthorizationPolicy, catalog.KindRequestAuthentication, catalog.KindHTTPRoute, catalog.KindGRPCRoute,
		catalog.KindDestinationRule, catalog.KindVirtualService} {
		if k == kk {
			return i
		}
	}
	return 99
}

// supportedKinds lists the kinds in error messages.
func supportedKinds() string {
	kinds := make([]string, 0, len(decoders))
	for k := range decoders {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	return strings.Join(kinds, ", ")
}
