// Command mutate is a mutation probe: it checks that the tests catch what
// they claim to. A passing suite proves little by itself; one that fails
// when the code is made wrong on purpose shows that it is watching. Each
// mutant in mutants.txt is a small wrong change (an off-by-one, a wrong
// close code, a forgotten call) that breaks a rule of PROTOCOL.md. The probe
// applies each in turn to a copy of the repository and runs `go test` there.
// A mutant the tests notice is killed, if the tests that failed fail again
// on their own, twice (else a flaky test may have failed by chance, or the
// tests catch it only now and then: "unsure"). One they miss survives: a
// gap in the tests, unless no client could tell the difference (an
// equivalent mutant; its why line starts "Equivalent").
//
//	nice -n 10 go run ./mutate              # every mutant, one at a time (slow)
//	go run ./mutate -run 'resume|outbox'    # those whose names match
//	go run ./mutate -list                   # where each snippet is; runs nothing
//
// A snippet must occur once in all the non-test Go files together, so code
// may move between files; when it changes, the probe stops at once ("snippet
// not found"). It fails then, and for every mutant not killed: survived,
// unsure, or invalid (it does not compile, and must be rewritten).
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"
)

// mutant is one deliberate bug: old, found once in the code, becomes new.
type mutant struct {
	name, why, old, new string
	equivalent          bool   // the why line starts "Equivalent": survival is expected
	file, where         string // where old is, as "file:line"
}

func main() {
	run := flag.String("run", "", "only the mutants whose names match this regular expression")
	timeout := flag.Duration("timeout", 3*time.Minute, "the longest one mutant's tests may take")
	skip := flag.String("skip", "", "tests not to run (go test -skip), say one known to be flaky")
	list := flag.Bool("list", false, "list the mutants and where their snippets are; run no tests")
	flag.Parse()
	// Ctrl-C stops the tests under way, and their copy is removed.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := probe(ctx, *run, *skip, *timeout, *list); err != nil {
		fmt.Fprintln(os.Stderr, "mutate:", err)
		os.Exit(1)
	}
}

func probe(ctx context.Context, pattern, skip string, timeout time.Duration, listOnly bool) error {
	re, err := regexp.Compile(pattern)
	if err != nil {
		return err
	}
	out, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		return fmt.Errorf("not in a git repository: %v", err)
	}
	root := strings.TrimSpace(string(out))
	if out, err = exec.Command("git", "-C", root, "ls-files", "-z").Output(); err != nil {
		return err
	}
	// What each mutant's copy starts from: the tracked files as they are on
	// disk now (edits not yet committed count), but the browser tests and
	// the probe itself.
	files := map[string]string{}
	for _, f := range strings.Split(strings.TrimRight(string(out), "\x00"), "\x00") {
		if !strings.HasPrefix(f, "e2e/") && !strings.HasPrefix(f, "mutate/") {
			b, err := os.ReadFile(filepath.Join(root, f))
			if err != nil {
				return err
			}
			files[f] = string(b)
		}
	}
	text, err := os.ReadFile(filepath.Join(root, "mutate", "mutants.txt"))
	if err != nil {
		return err
	}
	all, err := parse(string(text))
	if err != nil {
		return err
	}
	var mutants []*mutant
	var stale []string
	for _, m := range all {
		if re.MatchString(m.name) {
			mutants = append(mutants, m)
			if problem := locate(m, files); problem != "" {
				stale = append(stale, m.name+": "+problem)
			}
		}
	}
	switch {
	case len(stale) > 0:
		return errors.New(strings.Join(stale, "\n       "))
	case len(mutants) == 0:
		return fmt.Errorf("no mutant matches %q", pattern)
	case listOnly:
		for _, m := range mutants {
			fmt.Printf("%-24s %-16s %s\n", m.name, m.where, m.why)
		}
		return nil
	}

	// Without a mutant the tests must pass, or every mutant would look
	// killed. Three tries: a flaky test is named, not fatal.
	start := time.Now()
	fmt.Printf("%d mutants; first the tests without one...\n", len(mutants))
	for try := 1; ; try++ {
		res, tests, _ := test(ctx, files, nil, skip, timeout)
		if ctx.Err() != nil {
			return context.Cause(ctx) // interrupted
		} else if res == "survived" {
			break
		} else if try == 3 {
			return fmt.Errorf("the tests fail without a mutant (%s): fix them first", tests)
		}
		fmt.Printf("without a mutant, %s failed: flaky? once more\n", tests)
	}
	fmt.Printf("%-24s %-16s %-10s %6s  %s\n", "MUTANT", "WHERE", "RESULT", "TIME", "FAILING TESTS")
	failed := 0
	for _, m := range mutants {
		res, tests, took := test(ctx, files, m, skip, timeout)
		if ctx.Err() != nil {
			return context.Cause(ctx) // interrupted
		}
		if res != "killed" && res != "invalid" && m.equivalent {
			res = "equivalent"
		} else if res != "killed" {
			failed++
		}
		fmt.Printf("%-24s %-16s %-10s %5.0fs  %s\n", m.name, m.where, res, took.Seconds(), tests)
	}
	fmt.Printf("%d mutants, %d not killed, in %s\n", len(mutants), failed, time.Since(start).Round(time.Second))
	if failed > 0 {
		return fmt.Errorf("%d mutants not killed", failed)
	}
	return nil
}

// parse reads the list: blocks that begin with "=== name", in sections that
// begin with "--- why", "<<< old" and ">>> new". Lines that begin with '#'
// are comments (no line of Go code does).
func parse(text string) ([]*mutant, error) {
	var list []*mutant
	var section *string
	for i, line := range strings.Split(text, "\n") {
		switch {
		case strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "=== "):
			list = append(list, &mutant{name: strings.TrimSpace(line[4:])})
			section = nil
		case len(list) > 0 && (line == "--- why" || line == "<<< old" || line == ">>> new"):
			m := list[len(list)-1]
			section = map[string]*string{"--- why": &m.why, "<<< old": &m.old, ">>> new": &m.new}[line]
		case section != nil:
			*section += line + "\n"
		case strings.TrimSpace(line) != "":
			return nil, fmt.Errorf("mutants.txt:%d: text outside a section", i+1)
		}
	}
	for _, m := range list {
		m.why = strings.Join(strings.Fields(m.why), " ")
		m.old, m.new = strings.Trim(m.old, "\n"), strings.Trim(m.new, "\n")
		m.equivalent = strings.HasPrefix(m.why, "Equivalent")
		if m.why == "" || m.old == "" || m.old == m.new {
			return nil, fmt.Errorf("mutant %s: it needs a why, an old snippet and a different new one", m.name)
		}
	}
	return list, nil
}

// locate finds m's snippet, which must occur exactly once in all the
// non-test Go files.
func locate(m *mutant, files map[string]string) string {
	count := 0
	for f, src := range files {
		if !strings.HasSuffix(f, ".go") || strings.HasSuffix(f, "_test.go") {
			continue
		}
		if i := strings.Index(src, m.old); i >= 0 {
			count += strings.Count(src, m.old)
			m.file, m.where = f, fmt.Sprintf("%s:%d", f, 1+strings.Count(src[:i], "\n"))
		}
	}
	switch {
	case count == 0:
		return "snippet not found: keep the list current"
	case count > 1:
		return fmt.Sprintf("snippet found %d times: make it longer, to say which", count)
	}
	return ""
}

// test copies the files to a new directory, applies m (none when nil) and
// runs the tests there. It says whether they killed m, m survived, or m is
// invalid (it does not compile), and which tests failed or why.
func test(ctx context.Context, files map[string]string, m *mutant, skip string, timeout time.Duration) (result, detail string, took time.Duration) {
	start := time.Now()
	dir, err := os.MkdirTemp("", "mutate-")
	if err != nil {
		return "error", err.Error(), 0
	}
	defer os.RemoveAll(dir)
	for f, src := range files {
		if m != nil && f == m.file {
			src = strings.Replace(src, m.old, m.new, 1)
		}
		os.MkdirAll(filepath.Join(dir, filepath.Dir(f)), 0o755) // WriteFile says if it failed
		if err := os.WriteFile(filepath.Join(dir, f), []byte(src), 0o644); err != nil {
			return "error", err.Error(), 0
		}
	}

	// Not -race: a mutant needs the tests to fail, and without it they take
	// half the time. The context is a backstop for go test's own -timeout
	// (a hung test panics and says its name), with time to build.
	ctx, cancel := context.WithTimeout(ctx, 2*timeout+time.Minute)
	defer cancel()
	text, err := goTest(ctx, dir, timeout, "-skip", skip)
	var failed []string // the tests that failed (not their subtests), in order
	for _, s := range regexp.MustCompile(`(?m)^--- FAIL: (\w+)`).FindAllStringSubmatch(text, -1) {
		failed = append(failed, s[1])
	}
	switch {
	case err == nil:
		return "survived", "", time.Since(start)
	case strings.Contains(text, "[build failed]") || strings.Contains(text, "[setup failed]"):
		return "invalid", firstMatch(text, `(?m)^\S+\.go:\d+:\d+: .*$`, "build failed"), time.Since(start)
	case ctx.Err() != nil:
		return "killed", "timeout", time.Since(start)
	case len(failed) == 0 && strings.Contains(text, "panic: test timed out"):
		return "killed", "timeout: " + firstMatch(text, `running tests:\s+(\S+)`, "?"), time.Since(start)
	case len(failed) == 0:
		return "killed", firstMatch(text, `(?m)^(panic: .{0,40})`, "FAIL"), time.Since(start)
	}
	if detail = strings.Join(failed, " "); len(failed) > 3 {
		detail = strings.Join(failed[:3], " ") + " +more"
	}
	// A flaky test may have failed by chance: the kill counts only if the
	// tests that failed (the first three) fail again on their own, twice in
	// a row. (A mutant they catch only now and then is "unsure" too.)
	for i := 0; m != nil && i < 2; i++ {
		only := "^(" + strings.Join(failed[:min(3, len(failed))], "|") + ")$"
		if _, err := goTest(ctx, dir, timeout, "-run", only, "-failfast"); err == nil {
			return "unsure", detail + " (then passed on their own)", time.Since(start)
		}
	}
	return "killed", detail, time.Since(start)
}

// goTest runs go test in dir and returns what it printed.
func goTest(ctx context.Context, dir string, timeout time.Duration, args ...string) (string, error) {
	args = append([]string{"test", "-count=1", "-timeout", timeout.String()}, args...)
	cmd := exec.CommandContext(ctx, "go", append(args, "./...")...)
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // so as to stop the test binary too
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	var output bytes.Buffer
	cmd.Stdout, cmd.Stderr = &output, &output
	err := cmd.Run()
	return output.String(), err
}

// firstMatch returns the last group of expr's first match in text (the
// whole match when expr has no group), or otherwise.
func firstMatch(text, expr, otherwise string) string {
	s := regexp.MustCompile(expr).FindStringSubmatch(text)
	if s == nil {
		return otherwise
	}
	return s[len(s)-1]
}
