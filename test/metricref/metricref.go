// Package metricref knows which metrics termgate's code defines and which
// ones the chart's dashboard queries: the reference pages' test, the
// chart's offline test and the monitoring end-to-end test read both
// through it, so that they agree on what a metric name is.
package metricref

import (
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Defined reads the Prometheus options literals (Namespace: "termgate",
// Subsystem, Name) of the non-test Go files under each dir: the metrics
// the code defines, whether or not a process has exposed them yet.
func Defined(dirs ...string) ([]string, error) {
	var names []string
	for _, dir := range dirs {
		err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return err
			}
			f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.SkipObjectResolution)
			if err != nil {
				return err
			}
			ast.Inspect(f, func(n ast.Node) bool {
				if lit, ok := n.(*ast.CompositeLit); ok {
					if name := optsName(lit); name != "" {
						names = append(names, name)
					}
				}
				return true
			})
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("read metric definitions under %s: %w", dir, err)
		}
	}
	return names, nil
}

func optsName(lit *ast.CompositeLit) string {
	fields := map[string]string{}
	for _, e := range lit.Elts {
		kv, ok := e.(*ast.KeyValueExpr)
		if !ok {
			continue
		}
		key, ok1 := kv.Key.(*ast.Ident)
		val, ok2 := kv.Value.(*ast.BasicLit)
		if ok1 && ok2 && val.Kind == token.STRING {
			fields[key.Name], _ = strconv.Unquote(val.Value)
		}
	}
	if fields["Namespace"] != "termgate" || fields["Name"] == "" {
		return ""
	}
	parts := []string{"termgate"}
	if fields["Subsystem"] != "" {
		parts = append(parts, fields["Subsystem"])
	}
	return strings.Join(append(parts, fields["Name"]), "_")
}

// BaseName takes a histogram's _bucket, _count or _sum suffix off a series
// name, giving the metric's name.
func BaseName(n string) string {
	for _, s := range []string{"_bucket", "_count", "_sum"} {
		if b, ok := strings.CutSuffix(n, s); ok && strings.HasSuffix(b, "_seconds") {
			return b
		}
	}
	return n
}

// DashboardQueries reads the chart's Grafana dashboard (path) and returns
// each panel's queries, keyed "<panel title> #<n>", with Grafana's
// variables filled in by fill.
func DashboardQueries(path string, fill *strings.Replacer) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var dash struct {
		UID    string `json:"uid"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if dash.UID == "" || len(dash.Panels) == 0 {
		return nil, fmt.Errorf("%s: a dashboard without uid or panels", path)
	}
	out := map[string]string{}
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			return nil, fmt.Errorf("%s: panel %q has no query", path, p.Title)
		}
		for i, tg := range p.Targets {
			out[fmt.Sprintf("%s #%d", p.Title, i+1)] = fill.Replace(tg.Expr)
		}
	}
	return out, nil
}
