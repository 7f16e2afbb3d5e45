package manifest

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/trellis-mesh/trellis/internal/catalog"
)

// checkObject checks what can be checked of one object on its own.
func checkObject(obj any) error {
	switch o := obj.(type) {
	case *catalog.Namespace:
		return checkName(o.Name, "metadata.name")
	case *catalog.ServiceAccount:
		return checkMeta(o.Meta)
	case *catalog.Pod:
		if err := checkMeta(o.Meta); err != nil {
			return err
		}
		return checkPodSpec(o.Spec)
	case *catalog.Deployment:
		if err := checkMeta(o.Meta); err != nil {
			return err
		}
		return checkDeployment(o)
	case *catalog.Service:
		if err := checkMeta(o.Meta); err != nil {
			return err
		}
		return checkService(o)
	case *catalog.NetworkPolicy:
		return checkMeta(o.Meta)
	case *catalog.PeerAuthentication:
		return checkMeta(o.Meta)
	case *catalog.AuthorizationPolicy:
		return checkMeta(o.Meta)
	case *catalog.RequestAuthentication:
		return checkMeta(o.Meta)
	case *catalog.HTTPRoute:
		return checkMeta(o.Meta)
	case *catalog.GRPCRoute:
		return checkMeta(o.Meta)
	case *catalog.DestinationRule:
		return checkMeta(o.Meta)
	case *catalog.VirtualService:
		return checkMeta(o.Meta)
	}
	return nil
}

func checkMeta(m catalog.Meta) error {
	if err := checkName(m.Name, "metadata.name"); err != nil {
		return err
	}
	return checkName(m.Namespace, "metadata.namespace")
}

func checkName(name, field string) error {
	if name == "" {
		return fmt.Errorf("%s is required", field)
	}
	if errs := validation.IsDNS1123Label(name); len(errs) > 0 {
		return fmt.Errorf("%s %q: %s", field, name, errs[0])
	}
	return nil
}

// checkLabels refuses labels (written at field) Kubernetes would not
// take: keys that are not qualified names, values that are not label
// values; the first in key order.
func checkLabels(labels map[string]string, field string) error {
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		if errs := validation.IsQualifiedName(k); len(errs) > 0 {
			return fmt.Errorf("%s: key %q: %s", field, k, errs[0])
		}
		if errs := validation.IsValidLabelValue(labels[k]); len(errs) > 0 {
			return fmt.Errorf("%s: value %q of %s: %s", field, labels[k], k, errs[0])
		}
	}
	return nil
}

func checkDeployment(d *catalog.Deployment) error {
	if d.Replicas < 0 {
		return fmt.Errorf("spec.replicas %d is negative", d.Replicas)
	}
	if len(d.Selector) == 0 {
		return errors.New("spec.selector.matchLabels is required")
	}
	for k, v := range d.Selector {
		if d.Template.Labels[k] != v {
			return fmt.Errorf("spec.selector %s=%s does not match the template's labels %s; make them agree",
				k, v, catalog.FormatLabels(d.Template.Labels))
		}
	}
	if err := checkPodSpec(d.Template.Spec); err != nil {
		return fmt.Errorf("template: %w", err)
	}
	return nil
}

func checkPodSpec(s catalog.PodSpec) error {
	if len(s.Containers) == 0 {
		return errors.New("spec.containers is empty; declare at least one container")
	}
	switch s.RestartPolicy {
	case catalog.RestartAlways, catalog.RestartOnFailure, catalog.RestartNever:
	default:
		return fmt.Errorf("spec.restartPolicy %q: use Always, OnFailure or Never", s.RestartPolicy)
	}
	names := map[string]bool{}
	ports := map[string]string{} // "8080/TCP" -> container
	portNames := map[string]bool{}
	for _, c := range s.Containers {
		if err := checkName(c.Name, "container name"); err != nil {
			return err
		}
		if names[c.Name] {
			return fmt.Errorf("container %q: duplicate container name", c.Name)
		}
		names[c.Name] = true
		if len(c.Command) == 0 {
			return fmt.Errorf("container %q: no command: one-host mode ignores image, so set command (and args)", c.Name)
		}
		for _, p := range c.Ports {
			if p.Port < 1 || p.Port > 65535 {
				return fmt.Errorf("container %q: port %d is out of range 1-65535", c.Name, p.Port)
			}
			key := fmt.Sprintf("%d/%s", p.Port, p.Protocol)
			if other, ok := ports[key]; ok {
				return fmt.Errorf("container %q: port %s clashes with container %q: a pod's containers share one network namespace", c.Name, key, other)
			}
			ports[key] = c.Name
			if p.Name != "" {
				if portNames[p.Name] {
					return fmt.Errorf("container %q: port name %q is used twice in the pod", c.Name, p.Name)
				}
				portNames[p.Name] = true
			}
		}
	}
	return nil
}

func checkService(s *catalog.Service) error {
	if len(s.Ports) == 0 {
		return errors.New("spec.ports is empty; declare at least one port")
	}
	seen := map[string]bool{}
	names := map[string]bool{}
	for _, p := range s.Ports {
		if p.Port < 1 || p.Port > 65535 {
			return fmt.Errorf("port %d is out of range 1-65535", p.Port)
		}
		switch p.Protocol {
		case catalog.TCP, catalog.UDP, catalog.SCTP:
		default:
			return fmt.Errorf("port %d: protocol %q: use TCP, UDP or SCTP", p.Port, p.Protocol)
		}
		key := fmt.Sprintf("%d/%s", p.Port, p.Protocol)
		if seen[key] {
			return fmt.Errorf("port %s clashes: declared twice", key)
		}
		seen[key] = true
		if len(s.Ports) > 1 && p.Name == "" {
			return fmt.Errorf("port %d: name is required when a service has several ports", p.Port)
		}
		if p.Name != "" && names[p.Name] {
			return fmt.Errorf("port %d: name %q is used twice", p.Port, p.Name)
		}
		names[p.Name] = true
		if p.TargetPortName == "" && (p.TargetPort < 1 || p.TargetPort > 65535) {
			return fmt.Errorf("port %d: targetPort %d is out of range 1-65535", p.Port, p.TargetPort)
		}
	}
	return nil
}

// Validate checks s as a whole: every namespaced object's namespace and every
// pod's service account exist, every named targetPort resolves on the
// pods its service selects, and every DestinationRule names a Service, one
// rule per Service and namespace. It returns warnings for things that are legal but
// probably not meant, such as a selector that matches nothing.
//
// The namespace "default" and each namespace's "default" service account
// exist implicitly, as in Kubernetes.
func Validate(s *Set) (warnings []string, err error) {
	var errs []error
	namespaces := map[string]bool{"default": true}
	for _, ns := range s.Namespaces() {
		namespaces[ns.Name] = true
	}
	accounts := map[string]bool{}
	for _, sa := range s.ServiceAccounts() {
		accounts[sa.Namespace+"/"+sa.Name] = true
	}
	fail := func(ref catalog.Ref, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s: %s", s.Origin(ref), ref, fmt.Sprintf(format, args...)))
	}
	for _, ref := range s.Refs() {
		if ref.Namespace != "" && !namespaces[ref.Namespace] {
			fail(ref, "namespace %q is not declared; add a Namespace document", ref.Namespace)
		}
	}
	for _, w := range workloads(s) {
		sa := w.spec.ServiceAccount
		if sa != "default" && !accounts[w.ref.Namespace+"/"+sa] {
			fail(w.ref, "spec.serviceAccountName %q is not declared; add a ServiceAccount document in namespace %s", sa, w.ref.Namespace)
		}
	}
	for _, svc := range s.Services() {
		ref := catalog.Ref{Kind: catalog.KindService, Namespace: svc.Namespace, Name: svc.Name}
		selected := selectedWorkloads(s, svc)
		if len(svc.Selector) > 0 && len(selected) == 0 {
			warnings = append(warnings, fmt.Sprintf("%s: %s: selector %s matches no pod; the service has no endpoints until one appears",
				s.Origin(ref), ref, catalog.FormatLabels(svc.Selector)))
			continue
		}
		for _, p := range svc.Ports {
			if p.TargetPortName != "" && !anyResolves(p, selected) {
				fail(ref, "port %d: targetPort %q matches no container port", p.Port, p.TargetPortName)
			}
		}
	}
	errs = append(errs, checkPolicyPortNames(s)...)
	errs = append(errs, checkDestinationRules(s)...)
	sort.Strings(warnings)
	return warnings, errors.Join(errs...)
}

// workload is a pod or a deployment's template, as far as validation cares.
type workload struct {
	ref    catalog.Ref
	labels map[string]string
	spec   catalog.PodSpec
}

func workloads(s *Set) []workload {
	var out []workload
	for _, p := range s.Pods() {
		out = append(out, workload{catalog.Ref{Kind: catalog.KindPod, Namespace: p.Namespace, Name: p.Name}, p.Labels, p.Spec})
	}
	for _, d := range s.Deployments() {
		out = append(out, workload{catalog.Ref{Kind: catalog.KindDeployment, Namespace: d.Namespace, Name: d.Name}, d.Template.Labels, d.Template.Spec})
	}
	return out
}

func selectedWorkloads(s *Set, svc *catalog.Service) []workload {
	var out []workload
	for _, w := range workloads(s) {
		if w.ref.Namespace == svc.Namespace && catalog.SelectorMatches(svc.Selector, w.labels) {
			out = append(out, w)
		}
	}
	return out
}

func anyResolves(sp catalog.ServicePort, ws []workload) bool {
	for _, w := range ws {
		if _, ok := sp.ResolveTargetPort(&catalog.Pod{Spec: w.spec}); ok {
			return true
		}
	}
	return false
}
