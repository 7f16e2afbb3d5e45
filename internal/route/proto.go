package route

import (
	"encoding/json"
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/meshpb"
)

// ToProto is the config's form of routes: each as written, its spec in
// Gateway API's field names.
func ToProto(rs Routes) ([]*meshpb.Route, error) {
	var out []*meshpb.Route
	add := func(kind catalog.Kind, m catalog.Meta, spec any) error {
		s, err := specStruct(spec)
		if err != nil {
			return fmt.Errorf("%s %s/%s: %w", kind, m.Namespace, m.Name, err)
		}
		pr := &meshpb.Route{Kind: string(kind), Namespace: m.Namespace, Name: m.Name, Generation: m.Generation, Spec: s}
		if !m.CreationTimestamp.IsZero() {
			pr.Created = m.CreationTimestamp.UTC().Format(time.RFC3339Nano)
		}
		out = append(out, pr)
		return nil
	}
	for _, r := range rs.HTTP {
		if err := add(catalog.KindHTTPRoute, r.Meta, r.Spec); err != nil {
			return nil, err
		}
	}
	for _, r := range rs.GRPC {
		if err := add(catalog.KindGRPCRoute, r.Meta, r.Spec); err != nil {
			return nil, err
		}
	}
	for _, r := range rs.VS {
		if err := add(catalog.KindVirtualService, r.Meta, r.Spec); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func specStruct(spec any) (*structpb.Struct, error) {
	b, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	s := &structpb.Struct{}
	if err := s.UnmarshalJSON(b); err != nil {
		return nil, err
	}
	return s, nil
}

// FromProto reads the routes a config carries, for Compile. A route that
// does not decode is an error naming it: the config is refused.
func FromProto(prs []*meshpb.Route) (Routes, error) {
	var rs Routes
	for _, pr := range prs {
		m := catalog.Meta{Namespace: pr.GetNamespace(), Name: pr.GetName(), Generation: pr.GetGeneration()}
		if c := pr.GetCreated(); c != "" {
			t, err := time.Parse(time.RFC3339Nano, c)
			if err != nil {
				return Routes{}, fmt.Errorf("%s %s/%s: created %q is not an RFC 3339 time", pr.GetKind(), m.Namespace, m.Name, c)
			}
			m.CreationTimestamp = t
		}
		b, err := pr.GetSpec().MarshalJSON()
		if err != nil {
			return Routes{}, fmt.Errorf("%s %s/%s: %w", pr.GetKind(), m.Namespace, m.Name, err)
		}
		switch catalog.Kind(pr.GetKind()) {
		case catalog.KindHTTPRoute:
			r := &catalog.HTTPRoute{Meta: m}
			err = json.Unmarshal(b, &r.Spec)
			rs.HTTP = append(rs.HTTP, r)
		case catalog.KindGRPCRoute:
			r := &catalog.GRPCRoute{Meta: m}
			err = json.Unmarshal(b, &r.Spec)
			rs.GRPC = append(rs.GRPC, r)
		case catalog.KindVirtualService:
			r := &catalog.VirtualService{Meta: m}
			err = json.Unmarshal(b, &r.Spec)
			rs.VS = append(rs.VS, r)
		default:
			err = fmt.Errorf("unknown kind: want HTTPRoute, GRPCRoute or VirtualService")
		}
		if err != nil {
			return Routes{}, fmt.Errorf("%s %s/%s: the spec does not decode: %w", pr.GetKind(), m.Namespace, m.Name, err)
		}
	}
	return rs, nil
}
