package app

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"termgate.dev/termgate/test/metricref"
)

// Users configure termgate from docs/reference.md, so each section must list
// exactly the flags its subcommand has, with the defaults the code gives them.
func TestTheReferenceListsEveryFlagWithItsDefault(t *testing.T) {
	// Defaults that come from the environment are documented as $VAR; the
	// code's own defaults are what the page states.
	for _, env := range []string{"NODE_NAME", "POD_NAME", "POD_NAMESPACE", "KUBECONFIG"} {
		t.Setenv(env, "")
	}
	b, err := os.ReadFile(filepath.Join("..", "..", "..", "docs", "reference.md"))
	if err != nil {
		t.Fatal(err)
	}
	sections := referenceSections(string(b))
	for name, add := range map[string]func(*flag.FlagSet){
		"Agent":    newAgentOptions().AddFlags,
		"Webhook":  NewWebhookOptions().AddFlags,
		"Notifier": NewNotifierOptions().AddFlags,
	} {
		t.Run(name, func(t *testing.T) {
			fs := flag.NewFlagSet(name, flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			add(fs)
			rows, ok := sections[name]
			if !ok {
				t.Fatalf("docs/reference.md has no section %q", "## "+name)
			}
			documented := map[string]bool{}
			for _, r := range rows {
				for i, f := range r.flags {
					documented[f] = true
					got := fs.Lookup(f)
					if got == nil {
						t.Errorf("docs/reference.md names --%s, which termgate %s does not have", f, strings.ToLower(name))
						continue
					}
					if want := r.defaults[i]; want != envDefault && want != got.DefValue {
						t.Errorf("--%s: docs/reference.md says default %q, the code %q", f, want, got.DefValue)
					}
				}
			}
			fs.VisitAll(func(f *flag.Flag) {
				if !documented[f.Name] {
					t.Errorf("--%s of termgate %s is missing from docs/reference.md", f.Name, strings.ToLower(name))
				}
			})
		})
	}
}

// envDefault stands for a default documented as an environment variable.
const envDefault = "\x00env"

type referenceRow struct {
	flags    []string
	defaults []string // one per flag
}

var (
	flagName      = regexp.MustCompile("`--?([a-z0-9-]+)`")
	firstBacktick = regexp.MustCompile("`([^`]*)`")
	defaultsSplit = regexp.MustCompile(` / |, `)
)

// referenceSections reads the flag tables under each "## " heading: a row's
// first cell names one or more flags, its second their defaults in the same
// order, separated by " / " or ", " (`value`, `$ENV` or "empty").
func referenceSections(doc string) map[string][]referenceRow {
	sections := map[string][]referenceRow{}
	section := ""
	for _, line := range strings.Split(doc, "\n") {
		if h, ok := strings.CutPrefix(line, "## "); ok {
			section = strings.TrimSpace(h)
			continue
		}
		cells := strings.Split(line, "|")
		if len(cells) < 4 || !strings.HasPrefix(strings.TrimSpace(cells[1]), "`-") {
			continue
		}
		var r referenceRow
		for _, m := range flagName.FindAllStringSubmatch(cells[1], -1) {
			r.flags = append(r.flags, m[1])
		}
		for _, part := range defaultsSplit.Split(strings.TrimSpace(cells[2]), -1) {
			switch m := firstBacktick.FindStringSubmatch(part); {
			case strings.HasPrefix(part, "empty"):
				r.defaults = append(r.defaults, "")
			case m == nil:
				r.defaults = append(r.defaults, part) // compared, and so reported
			case strings.HasPrefix(m[1], "$"):
				r.defaults = append(r.defaults, envDefault)
			default:
				r.defaults = append(r.defaults, m[1])
			}
		}
		if len(r.defaults) != len(r.flags) {
			// A row the reader cannot pair up is itself a documentation
			// error: report each of its flags with the whole cell.
			r.defaults = slices.Repeat([]string{strings.TrimSpace(cells[2])}, len(r.flags))
		}
		sections[section] = append(sections[section], r)
	}
	return sections
}

// Dashboards and alerts are written from the metric tables, so each page
// must name exactly the metrics its components register.
func TestTheReferencePagesNameEveryMetricRegistered(t *testing.T) {
	root := filepath.Join("..", "..", "..")
	for page, dirs := range map[string][]string{
		"reference.md":     {"agent", "webhook", "cmd", "certs", "nodemark"},
		"notifications.md": {"notifier"},
	} {
		b, err := os.ReadFile(filepath.Join(root, "docs", page))
		if err != nil {
			t.Fatal(err)
		}
		documented := map[string]bool{}
		for _, m := range metricName.FindAllStringSubmatch(string(b), -1) {
			documented[m[1]+m[2]] = true // one of the two is empty
		}
		registered := map[string]bool{}
		for _, dir := range dirs {
			for _, name := range registeredMetrics(t, filepath.Join(root, dir)) {
				registered[name] = true
			}
		}
		if len(registered) == 0 {
			t.Fatalf("no metric definitions found under %v: the reader no longer matches the code", dirs)
		}
		for name := range registered {
			if !documented[name] {
				t.Errorf("metric %s is missing from docs/%s", name, page)
			}
		}
		for name := range documented {
			if !registered[name] {
				t.Errorf("docs/%s names %s, which no component under %v registers", page, name, dirs)
			}
		}
	}
}

// metricName matches a metric in a table's first cell: `name` or `name{labels}`.
var metricName = regexp.MustCompile("(?m)^\\| `(termgate_[a-z_]+)[`{]|, `(termgate_[a-z_]+)[`{]")

// registeredMetrics returns the metrics the non-test Go files under dir define.
func registeredMetrics(t *testing.T, dir string) []string {
	t.Helper()
	names, err := metricref.Defined(dir)
	if err != nil {
		t.Fatal(err)
	}
	return names
}
