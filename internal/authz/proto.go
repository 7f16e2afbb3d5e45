package authz

import "github.com/trellis-mesh/trellis/internal/meshpb"

// ToProto is the config's form of policies selected for one workload.
func ToProto(policies []Policy) *meshpb.Authorization {
	out := &meshpb.Authorization{}
	for _, p := range policies {
		pp := &meshpb.AuthorizationPolicy{Namespace: p.Namespace, Name: p.Name, Action: string(p.Spec.Action), DryRun: p.DryRun}
		for _, r := range p.Spec.Rules {
			pr := &meshpb.AuthorizationRule{}
			for _, f := range r.From {
				s := f.Source
				pr.From = append(pr.From, &meshpb.AuthorizationSource{
					Principals: s.Principals, NotPrincipals: s.NotPrincipals,
					RequestPrincipals: s.RequestPrincipals, NotRequestPrincipals: s.NotRequestPrincipals,
					Namespaces: s.Namespaces, NotNamespaces: s.NotNamespaces,
					IpBlocks: s.IPBlocks, NotIpBlocks: s.NotIPBlocks,
					RemoteIpBlocks: s.RemoteIPBlocks, NotRemoteIpBlocks: s.NotRemoteIPBlocks,
				})
			}
			for _, t := range r.To {
				o := t.Operation
				pr.To = append(pr.To, &meshpb.AuthorizationOperation{
					Hosts: o.Hosts, NotHosts: o.NotHosts, Ports: o.Ports, NotPorts: o.NotPorts,
					Methods: o.Methods, NotMethods: o.NotMethods, Paths: o.Paths, NotPaths: o.NotPaths,
				})
			}
			for _, c := range r.When {
				pr.When = append(pr.When, &meshpb.AuthorizationCondition{Key: c.Key, Values: c.Values, NotValues: c.NotValues})
			}
			pp.Rules = append(pp.Rules, pr)
		}
		out.Policies = append(out.Policies, pp)
	}
	return out
}

// FromProto reads the policies a config carries, for Compile.
func FromProto(a *meshpb.Authorization) []Policy {
	var out []Policy
	for _, pp := range a.GetPolicies() {
		p := Policy{Namespace: pp.GetNamespace(), Name: pp.GetName(), DryRun: pp.GetDryRun(), Spec: Spec{Action: Action(pp.GetAction())}}
		for _, pr := range pp.GetRules() {
			var r Rule
			for _, s := range pr.GetFrom() {
				r.From = append(r.From, From{Source: Source{
					Principals: s.GetPrincipals(), NotPrincipals: s.GetNotPrincipals(),
					RequestPrincipals: s.GetRequestPrincipals(), NotRequestPrincipals: s.GetNotRequestPrincipals(),
					Namespaces: s.GetNamespaces(), NotNamespaces: s.GetNotNamespaces(),
					IPBlocks: s.GetIpBlocks(), NotIPBlocks: s.GetNotIpBlocks(),
					RemoteIPBlocks: s.GetRemoteIpBlocks(), NotRemoteIPBlocks: s.GetNotRemoteIpBlocks(),
				}})
			}
			for _, o := range pr.GetTo() {
				r.To = append(r.To, To{Operation: Operation{
					Hosts: o.GetHosts(), NotHosts: o.GetNotHosts(), Ports: o.GetPorts(), NotPorts: o.GetNotPorts(),
					Methods: o.GetMethods(), NotMethods: o.GetNotMethods(), Paths: o.GetPaths(), NotPaths: o.GetNotPaths(),
				}})
			}
			for _, c := range pr.GetWhen() {
				r.When = append(r.When, Condition{Key: c.GetKey(), Values: c.GetValues(), NotValues: c.GetNotValues()})
			}
			p.Spec.Rules = append(p.Spec.Rules, r)
		}
		out = append(out, p)
	}
	return out
}
