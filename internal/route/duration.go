package route

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/trellis-mesh/trellis/internal/catalog"
)

// parseDuration reads a GEP-2257 duration: one to four components of one
// to five digits and a unit of h, m, s or ms, summed ("1h30m", "500ms",
// "0s").
func parseDuration(d catalog.Duration) (time.Duration, error) {
	s := string(d)
	if s == "" {
		return 0, fmt.Errorf("empty duration: write a number and a unit, as 500ms, 10s or 1h")
	}
	var total time.Duration
	for n := 0; s != ""; n++ {
		if n == 4 {
			return 0, fmt.Errorf("duration %q: at most four components, as 1h30m30s500ms", d)
		}
		digits := len(s) - len(strings.TrimLeft(s, "0123456789"))
		if digits == 0 || digits > 5 {
			return 0, fmt.Errorf("duration %q: each component is 1 to 5 digits and a unit (h, m, s, ms), as 500ms or 1h30m", d)
		}
		v, _ := strconv.Atoi(s[:digits])
		s = s[digits:]
		var unit time.Duration
		switch {
		case strings.HasPrefix(s, "ms"):
			unit, s = time.Millisecond, s[2:]
		case strings.HasPrefix(s, "h"):
			unit, s = time.Hour, s[1:]
		case strings.HasPrefix(s, "m"):
			unit, s = time.Minute, s[1:]
		case strings.HasPrefix(s, "s"):
			unit, s = time.Second, s[1:]
		default:
			return 0, fmt.Errorf("duration %q: the unit is h, m, s or ms, as 500ms or 1h30m", d)
		}
		total += time.Duration(v) * unit
	}
	return total, nil
}

// formatDuration writes d in GEP-2257's standard form: descending units,
// none repeated, "0s" for zero.
func formatDuration(d time.Duration) string {
	if d == 0 {
		return "0s"
	}
	if d == NoTimeout {
		return "none"
	}
	var b strings.Builder
	for _, u := range []struct {
		unit time.Duration
		name string
	}{{time.Hour, "h"}, {time.Minute, "m"}, {time.Second, "s"}, {time.Millisecond, "ms"}} {
		if n := d / u.unit; n > 0 {
			b.WriteString(strconv.FormatInt(int64(n), 10) + u.name)
			d -= n * u.unit
		}
	}
	return b.String()
}
