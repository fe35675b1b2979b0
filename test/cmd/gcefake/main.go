// Command gcefake runs fake GCE metadata servers for a list of nodes, for
// demos and manual tests. It prints one "NODE HOST:PORT" line per node (the
// value for that node's GCE_METADATA_HOST), then reads commands on standard
// input until it is interrupted:
//
//	NODE KEY VALUE   set a key, e.g. "node-a instance/preempted TRUE"
//	NODE -KEY        delete a key, e.g. "node-a -instance/upcoming-maintenance"
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"termgate.dev/termgate/test/gcefake"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "gcefake:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, in io.Reader, out, errOut io.Writer) error {
	fs := flag.NewFlagSet("gcefake", flag.ContinueOnError)
	var spec gcefake.Instance
	fs.StringVar(&spec.Zone, "zone", "us-central1-a", "zone of every node")
	fs.StringVar(&spec.MachineType, "machine-type", "e2-standard-4", "machine type of every node")
	fs.BoolVar(&spec.Preemptible, "preemptible", false, "make every node a Spot VM")
	fs.StringVar(&spec.Accelerator, "accelerator", "", "accelerator of every node, such as nvidia-l4")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return errors.New("usage: gcefake [flags] NODE...")
	}
	fleet := gcefake.NewFleet()
	defer fleet.Close()
	for _, name := range fs.Args() {
		spec.Name = name
		s, err := fleet.Add(spec)
		if err != nil {
			return err
		}
		fmt.Fprintln(out, name, s.Host())
	}
	go readCommands(fleet, in, errOut) // ends with standard input or the process
	<-ctx.Done()
	return fleet.Close()
}

func readCommands(fleet *gcefake.Fleet, in io.Reader, errOut io.Writer) {
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		if err := apply(fleet, sc.Text()); err != nil {
			fmt.Fprintln(errOut, "gcefake:", err)
		}
	}
}

func apply(fleet *gcefake.Fleet, line string) error {
	fields := strings.Fields(line)
	if len(fields) < 2 {
		return fmt.Errorf("want NODE KEY VALUE or NODE -KEY, got %q", line)
	}
	s, ok := fleet.Get(fields[0])
	if !ok {
		return fmt.Errorf("no node %q", fields[0])
	}
	if key, del := strings.CutPrefix(fields[1], "-"); del {
		s.Delete(key)
		return nil
	}
	return s.Set(fields[1], strings.Join(fields[2:], " "))
}
