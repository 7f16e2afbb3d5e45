package cli

import (
	"fmt"
	"io"
	"strings"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/localmesh"
	meshroute "github.com/trellis-mesh/trellis/internal/route"
)

// printRoutes prints one row per parent of each route: the Service (and
// port) it attaches to, Accepted and ResolvedRefs, and the messages of
// every condition not as it should be, PartiallyInvalid included. A
// route with no parentRef to a Service gets one row that says so.
func printRoutes(w io.Writer, routes []localmesh.RouteStatus, allNS, _ bool) {
	row(w, withNS(allNS, "NAMESPACE", []string{"NAME", "PARENT", "ACCEPTED", "RESOLVED-REFS", "AGE", "MESSAGE"})...)
	for _, r := range routes {
		if len(r.Status.Parents) == 0 {
			row(w, withNS(allNS, r.Namespace, []string{r.Name, "<none>", "-", "-", age(r.Created),
				`no parentRef names a Service (group "", kind Service): the mesh does not use this route`})...)
		}
		for _, p := range r.Status.Parents {
			accepted, resolved := conditionOf(p, meshroute.ConditionAccepted), conditionOf(p, meshroute.ConditionResolvedRefs)
			row(w, withNS(allNS, r.Namespace, []string{r.Name, parentName(r.Namespace, p.ParentRef),
				statusOf(accepted), statusOf(resolved), age(r.Created), problems(p.Conditions)})...)
		}
	}
}

// parentName is "Service ns/name", with ":port" or ":sectionName" when
// the parentRef names one port.
func parentName(routeNS string, p catalog.ParentReference) string {
	ns := p.Namespace
	if ns == "" {
		ns = routeNS
	}
	s := p.Kind + " " + ns + "/" + p.Name
	switch {
	case p.Port != 0 && p.SectionName != "":
		s += fmt.Sprintf(":%d(%s)", p.Port, p.SectionName)
	case p.Port != 0:
		s += fmt.Sprintf(":%d", p.Port)
	case p.SectionName != "":
		s += ":" + p.SectionName
	}
	return s
}

func conditionOf(p catalog.RouteParentStatus, typ string) *catalog.Condition {
	for i := range p.Conditions {
		if p.Conditions[i].Type == typ {
			return &p.Conditions[i]
		}
	}
	return nil
}

// statusOf is "True", or the status and reason of a condition that is
// not True ("False (NoMatchingParent)"); "-" when there is none.
func statusOf(c *catalog.Condition) string {
	switch {
	case c == nil:
		return "-"
	case c.Status == catalog.ConditionTrue:
		return string(c.Status)
	}
	return fmt.Sprintf("%s (%s)", c.Status, c.Reason)
}

// problems joins the messages of the conditions not in their good state
// (Accepted or ResolvedRefs not True, PartiallyInvalid True), each as
// "Type/Reason: message"; "<none>" when all is well.
func problems(conds []catalog.Condition) string {
	var out []string
	for _, c := range conds {
		bad := c.Status != catalog.ConditionTrue
		if c.Type == meshroute.ConditionPartiallyInvalid {
			bad = c.Status == catalog.ConditionTrue
		}
		if bad {
			out = append(out, c.Type+"/"+c.Reason+": "+c.Message)
		}
	}
	if len(out) == 0 {
		return "<none>"
	}
	return strings.Join(out, "; ")
}
