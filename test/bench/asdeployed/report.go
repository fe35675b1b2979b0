package asdeployed

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/localrun"
)

// codeDirs make up the termgate binary and what the benchmarks install.
var codeDirs = []string{"agent", "webhook", "cmd/termgate", "nodemark", "certs", "manifests", "go.mod", "go.sum"}

// Build compiles the termgate binary from the work tree and names the code
// it was built from (see codeState). The tree is read before and after the
// build; if it changed meanwhile, the state says so.
func Build(ctx context.Context, dir string) (binary, state string, err error) {
	before, err := codeState(ctx)
	if err != nil {
		return "", "", err
	}
	if binary, err = localrun.Build(ctx, dir); err != nil {
		return "", "", err
	}
	after, err := codeState(ctx)
	if err != nil {
		return "", "", err
	}
	bin, err := fileHash(binary)
	if err != nil {
		return "", "", err
	}
	state = after
	if before != after {
		state = "work tree changed during the build, from " + before + " to " + after
	}
	return binary, state + "; termgate binary sha256 " + bin, nil
}

// codeState names the code a run measures: the commit, the files changed
// since in the directories that make up the binary and the manifests, and a
// hash of those changes. Several people change the tree during a session,
// so a figure without this is not reproducible.
func codeState(ctx context.Context) (string, error) {
	root, err := cluster.RepoRoot()
	if err != nil {
		return "", err
	}
	git := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, "git", args...)
		cmd.Dir = root
		out, err := cmd.Output()
		if err != nil {
			return "", fmt.Errorf("git %s: %w", strings.Join(args, " "), err)
		}
		return string(out), nil
	}
	head, err := git("rev-parse", "--short=12", "HEAD")
	if err != nil {
		return "", err
	}
	status, err := git(append([]string{"status", "--porcelain", "--"}, codeDirs...)...)
	if err != nil {
		return "", err
	}
	diff, err := git(append([]string{"diff", "HEAD", "--"}, codeDirs...)...)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	io.WriteString(h, diff)
	var files []string
	for _, line := range strings.Split(strings.TrimRight(status, "\n"), "\n") {
		if len(line) < 4 {
			continue
		}
		path := strings.TrimSpace(line[3:])
		files = append(files, path)
		// Untracked files are not in the diff: hash their content.
		if strings.HasPrefix(line, "??") {
			if err := hashTree(h, filepath.Join(root, path)); err != nil {
				return "", err
			}
		}
	}
	state := "commit " + strings.TrimSpace(head)
	if len(files) > 0 {
		state += fmt.Sprintf(" + uncommitted changes (sha256 %s) in %s", hex.EncodeToString(h.Sum(nil))[:12], strings.Join(files, " "))
	}
	return state, nil
}

func hashTree(h io.Writer, path string) error {
	return filepath.WalkDir(path, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("hash %s: %w", p, err)
		}
		io.WriteString(h, p)
		h.Write(b)
		return nil
	})
}

func fileHash(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])[:12], nil
}

// Figure is one reported key.
type Figure struct {
	Key    string
	Value  float64
	Target string // "<= 1000", "" when there is none
	Note   string // how it was obtained, when not obvious
}

// Report prints the figures as a table and writes them as a JSON object
// (key to number, plus "measured_on") to out.
func Report(title, out, measuredOn string, figures []Figure) error {
	var b bytes.Buffer
	fmt.Fprintln(&b, title)
	fmt.Fprintln(&b, "measured on:", measuredOn)
	fmt.Fprintf(&b, "%-42s %10s  %-10s %s\n", "key", "value", "target", "")
	res := map[string]any{"measured_on": measuredOn}
	for _, f := range figures {
		fmt.Fprintf(&b, "%-42s %10.3f  %-10s %s\n", f.Key, f.Value, f.Target, f.Note)
		res[f.Key] = f.Value
	}
	os.Stdout.Write(b.Bytes())
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(out), err)
	}
	js, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(out, append(js, '\n'), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", out, err)
	}
	return nil
}

// Percentile returns the p-th percentile (nearest rank, rounding down) of
// xs, 0 for none.
func Percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[int(float64(len(s)-1)*p/100)]
}
