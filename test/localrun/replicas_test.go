package localrun

import (
	"bufio"
	"net"
	"testing"
)

// The balancer hands each new connection to the next backend in turn,
// skips one it cannot dial, and carries bytes both ways.
func TestBalancerRoundRobin(t *testing.T) {
	var addrs []string
	for i := range 2 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		addrs = append(addrs, ln.Addr().String())
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					if _, err := bufio.NewReader(c).ReadString('\n'); err == nil {
						c.Write([]byte{byte('0' + i), '\n'})
					}
				}()
			}
		}()
	}
	// A backend that refuses: a port listened on, then closed.
	gone, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := gone.Addr().String()
	gone.Close()

	b, err := newBalancer()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.close)
	b.add(addrs[0])
	b.add(refused)
	b.add(addrs[1])
	var got string
	for range 3 {
		c, err := net.Dial("tcp", b.ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte("hello\n")); err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if err != nil {
			t.Fatalf("answer through the balancer: %v", err)
		}
		got += line[:1]
	}
	// First to backend 0, then the refusing one (passed on to backend 1),
	// then backend 1.
	if got != "011" {
		t.Errorf("backends answering in turn: %q, want 011", got)
	}
	if n := b.backends[1].conns.Load(); n != 0 {
		t.Errorf("the refusing backend counted %d connections", n)
	}
}
