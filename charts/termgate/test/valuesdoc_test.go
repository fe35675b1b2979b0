package charttest

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	yamlv3 "go.yaml.in/yaml/v3"
)

// update rewrites the generated parts of the repository (the values table
// of docs/helm.md) instead of checking them: `make chart-docs`.
var update = flag.Bool("update", false, "rewrite generated files instead of comparing")

const (
	tableBegin = "<!-- values table: generated from charts/termgate/values.yaml and values.schema.json by `make chart-docs`; do not edit -->"
	tableEnd   = "<!-- end of values table -->"
)

// docs/helm.md's table of values is values.yaml's keys, defaults and
// comments with the schema's types: it cannot name a value the chart does
// not have, or miss one.
func TestTheValuesTableIsTheChartsValues(t *testing.T) {
	table := valuesTable(t)
	path := filepath.Join(repoRoot(t), "docs", "helm.md")
	doc := string(readFile(t, path))
	i, j := strings.Index(doc, tableBegin), strings.Index(doc, tableEnd)
	if i < 0 || j < i {
		t.Fatalf("%s: no values table markers", path)
	}
	fresh := doc[:i] + tableBegin + "\n\n" + table + "\n" + doc[j:]
	if *update {
		if err := os.WriteFile(path, []byte(fresh), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if fresh != doc {
		t.Errorf("docs/helm.md's values table differs from the chart's values: run `make chart-docs`")
	}
}

// valuesTable renders one row per value: a leaf of values.yaml, or a map
// or list the schema takes as a whole (resources, affinity, labels).
func valuesTable(t *testing.T) string {
	t.Helper()
	var root yamlv3.Node
	if err := yamlv3.Unmarshal(readFile(t, filepath.Join(chartDir(t), "values.yaml")), &root); err != nil {
		t.Fatal(err)
	}
	var schema map[string]any
	if err := json.Unmarshal(readFile(t, filepath.Join(chartDir(t), "values.schema.json")), &schema); err != nil {
		t.Fatal(err)
	}
	defs, _ := schema["definitions"].(map[string]any)
	var b strings.Builder
	b.WriteString("| value | type | default | what it is |\n|---|---|---|---|\n")
	var walk func(n *yamlv3.Node, s map[string]any, path string)
	walk = func(n *yamlv3.Node, s map[string]any, path string) {
		for k := 0; k+1 < len(n.Content); k += 2 {
			key, val := n.Content[k], n.Content[k+1]
			p := strings.TrimPrefix(path+"."+key.Value, ".")
			raw := prop(s, key.Value)
			sub := resolve(raw, defs)
			if sub == nil {
				t.Errorf("values.yaml has %s, which the schema does not describe", p)
				continue
			}
			// A definition ($ref: a Kubernetes type such as affinity) is
			// one value; the chart's own groups are walked into.
			_, isRef := raw["$ref"]
			if val.Kind == yamlv3.MappingNode && sub["properties"] != nil && !isRef {
				walk(val, sub, p)
				continue
			}
			fmt.Fprintf(&b, "| `%s` | %s | %s | %s |\n", p, typeOf(sub), defaultOf(t, val), describe(key, sub))
		}
	}
	walk(root.Content[0], schema, "")
	return b.String()
}

func prop(s map[string]any, key string) map[string]any {
	props, _ := s["properties"].(map[string]any)
	p, _ := props[key].(map[string]any)
	return p
}

// resolve follows a $ref (or a single allOf of one) into the definitions.
func resolve(s map[string]any, defs map[string]any) map[string]any {
	if s == nil {
		return nil
	}
	ref, _ := s["$ref"].(string)
	if all, ok := s["allOf"].([]any); ok && len(all) == 1 {
		if m, ok := all[0].(map[string]any); ok {
			ref, _ = m["$ref"].(string)
		}
	}
	if name, ok := strings.CutPrefix(ref, "#/definitions/"); ok {
		d, _ := defs[name].(map[string]any)
		merged := map[string]any{}
		for k, v := range d {
			merged[k] = v
		}
		for k, v := range s {
			if k != "$ref" && k != "allOf" {
				merged[k] = v
			}
		}
		return merged
	}
	return s
}

func typeOf(s map[string]any) string {
	if enum, ok := s["enum"].([]any); ok {
		var vals []string
		for _, v := range enum {
			vals = append(vals, fmt.Sprintf("`%v`", v))
		}
		return "one of " + strings.Join(vals, ", ")
	}
	if d, ok := s["description"].(string); ok && s["type"] == "string" && s["pattern"] != nil {
		return "string: " + d
	}
	switch ty := s["type"].(type) {
	case string:
		return ty
	case []any:
		var parts []string
		for _, p := range ty {
			parts = append(parts, fmt.Sprint(p))
		}
		return strings.Join(parts, " or ")
	}
	return "object"
}

// defaultOf prints a value as one line of flow YAML.
func defaultOf(t *testing.T, n *yamlv3.Node) string {
	c := *n
	c.HeadComment, c.LineComment, c.FootComment = "", "", ""
	c.Style = yamlv3.FlowStyle
	setFlow(&c)
	out, err := yamlv3.Marshal(&c)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.TrimSpace(string(out))
	if s == "" || s == `""` {
		return "empty"
	}
	return "`" + strings.ReplaceAll(s, "|", `\|`) + "`"
}

func setFlow(n *yamlv3.Node) {
	if n.Kind == yamlv3.MappingNode || n.Kind == yamlv3.SequenceNode {
		n.Style = yamlv3.FlowStyle
	}
	if n.Kind == yamlv3.ScalarNode && strings.Contains(n.Value, "\n") {
		n.Style = yamlv3.DoubleQuotedStyle
	}
	for i := range n.Content {
		c := *n.Content[i]
		c.HeadComment, c.LineComment, c.FootComment = "", "", ""
		setFlow(&c)
		n.Content[i] = &c
	}
}

// commentedOutKey is a comment line that is a key left unset on purpose
// ("# topologySpreadConstraints: []"): the lines above it describe that
// key, not the next one.
var commentedOutKey = regexp.MustCompile(`^[a-z][A-Za-z0-9]*:( |$)`)

// describe is the comment above the key in values.yaml, or the schema's
// description.
func describe(key *yamlv3.Node, s map[string]any) string {
	var lines []string
	for _, l := range strings.Split(key.HeadComment, "\n") {
		l = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(l), "#"))
		if commentedOutKey.MatchString(l) {
			lines = nil
			continue
		}
		if l != "" {
			lines = append(lines, l)
		}
	}
	text := strings.Join(lines, " ")
	if d, _ := s["description"].(string); text == "" && s["pattern"] == nil {
		text = d // a pattern's description is in the type column
	}
	return strings.ReplaceAll(text, "|", `\|`)
}

// optionalFlagCall is a template's `include "termgate.optionalFlag" (list
// "--flag" $x.value DEFAULT)`: the flag is passed only when the value
// differs from DEFAULT, which must therefore be the binary's own default.
var optionalFlagCall = regexp.MustCompile(`termgate\.optionalFlag" \(list "(--?[a-z-]+)" \$([a-z]+)\.([A-Za-z.]+) ([^)]+)\)`)

// templateVars are the variables the templates bind to a part of the
// values ({{- $a := .Values.agent }}).
var templateVars = map[string]string{"a": "agent", "w": "webhook", "c": "certificates", "n": "notifier"}

// referenceRow is a flag's row of docs/reference.md: | `--flag` | `default` | ...,
// or | `--a` / `--b` | `x` / `y` | ...
var referenceRow = regexp.MustCompile("^\\| (`--?[a-z-]+`(?: / `--?[a-z-]+`)*) \\| ([^|]+) \\|")

// Each flag the chart passes only when changed carries the binary's own
// default (as docs/reference.md gives it, which a test of the binary keeps
// in step with the code), and values.yaml starts from that default, so
// that a default install passes none of them.
func TestTheChartsFlagDefaultsAreTheBinarysOwn(t *testing.T) {
	ref := readFile(t, filepath.Join(repoRoot(t), "docs", "reference.md"))
	sections := map[string]map[string]string{}
	section := ""
	for _, line := range strings.Split(string(ref), "\n") {
		if h, ok := strings.CutPrefix(line, "## "); ok {
			section = strings.ToLower(strings.TrimSpace(h))
			sections[section] = map[string]string{}
			continue
		}
		if m := referenceRow.FindStringSubmatch(line); m != nil && section != "" {
			flags, defaults := strings.Split(m[1], " / "), strings.Split(strings.TrimSpace(m[2]), " / ")
			for i, f := range flags {
				if len(flags) == len(defaults) {
					sections[section][strings.Trim(f, "`")] = strings.Trim(defaults[i], "`")
				}
			}
		}
	}
	vals := values(t, string(readFile(t, filepath.Join(chartDir(t), "values.yaml"))))
	files, err := filepath.Glob(filepath.Join(chartDir(t), "templates", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, f := range files {
		component := "agent"
		switch base := filepath.Base(f); {
		case strings.HasPrefix(base, "webhook"):
			component = "webhook"
		case strings.HasPrefix(base, "notifier"):
			component = "notifier"
		case !strings.HasPrefix(base, "agent"):
			continue
		}
		for _, m := range optionalFlagCall.FindAllStringSubmatch(string(readFile(t, f)), -1) {
			flagName, def := m[1], strings.Trim(m[4], `"`)
			path := append([]string{templateVars[m[2]]}, strings.Split(m[3], ".")...)
			checked++
			want, ok := sections[component][flagName]
			if !ok {
				t.Errorf("%s: %s is not in docs/reference.md's %s section", filepath.Base(f), flagName, component)
				continue
			}
			if def != want {
				t.Errorf("%s: %s is left out when %q, but the binary's default is %q", filepath.Base(f), flagName, def, want)
			}
			if got := fmt.Sprint(get(vals, path...)); got != want {
				t.Errorf("values.yaml %s is %q, not the default %q of %s: a default install would pass the flag", strings.Join(path, "."), got, want, flagName)
			}
		}
	}
	if checked < 10 {
		t.Errorf("only %d optional flags found in the templates: the reader no longer matches them", checked)
	}
}
