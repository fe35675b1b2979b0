package notice

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"k8s.io/utils/clock"

	"termgate.dev/termgate/nodemark"
)

// Board assembles a source's Reading from channels read on their own (one
// goroutine per metadata key or path), so that a channel that fails or
// serves garbage neither delays nor clears another. Publish sends the
// newest Reading, and only when it changed.
type Board struct {
	source    string
	channels  []string
	channelOf func(nodemark.Mark) string
	clk       clock.Clock
	poke      chan struct{}
	created   time.Time

	mu       sync.Mutex
	state    map[string]*channel
	newest   time.Time
	everRead bool
}

type channel struct {
	read       bool
	notices    []Notice
	unreadable []Unreadable
	contact    time.Time
}

// NewBoard returns a board for the named channels of source. channelOf
// maps a mark to the channel its notice comes from (see Reading.ChannelOf).
func NewBoard(source string, channels []string, channelOf func(nodemark.Mark) string, clk clock.Clock) *Board {
	b := &Board{source: source, channels: channels, channelOf: channelOf, clk: clk, poke: make(chan struct{}, 1), state: map[string]*channel{}, created: clk.Now()}
	for _, c := range channels {
		b.state[c] = &channel{}
	}
	return b
}

// Set records a channel's answer: the notices it holds and the values in
// it that could not be read. understood is false when the answer as a
// whole could not be read: the channel then keeps its last notices (a
// garbage value neither raises nor withdraws one) and stays unread if it
// never had a good answer.
func (b *Board) Set(ch string, notices []Notice, unreadable []Unreadable, understood bool) {
	b.mu.Lock()
	c := b.state[ch]
	now := b.clk.Now()
	c.contact = now
	c.unreadable = unreadable
	if understood {
		c.read, c.notices = true, notices
		b.everRead = true
	}
	b.newest = now
	b.mu.Unlock()
	select {
	case b.poke <- struct{}{}:
	default:
	}
}

// Touch records that the cloud answered on ch without a new value (a
// hanging GET that timed out): the channel is alive.
func (b *Board) Touch(ch string) {
	b.mu.Lock()
	b.state[ch].contact = b.clk.Now()
	b.mu.Unlock()
}

// Reading is the board's current state.
func (b *Board) Reading() Reading {
	b.mu.Lock()
	defer b.mu.Unlock()
	r := Reading{Source: b.source, At: b.newest, ChannelOf: b.channelOf}
	for _, name := range b.channels {
		c := b.state[name]
		if !c.read {
			r.Unread = append(r.Unread, name)
		}
		r.Notices = append(r.Notices, c.notices...)
		r.Unreadable = append(r.Unreadable, c.unreadable...)
	}
	return r
}

// Publish sends the reading on out whenever it changes, until ctx ends.
// Nothing is sent before a first answer.
func (b *Board) Publish(ctx context.Context, out chan<- Reading) {
	var last Reading
	sent := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-b.poke:
		}
		r := b.Reading()
		if r.At.IsZero() || (sent && Same(last, r)) {
			continue
		}
		select {
		case out <- r:
			last, sent = r, true
		case <-ctx.Done():
			return
		}
	}
}

// Unread lists the channels without a good answer yet.
func (b *Board) Unread() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for _, name := range b.channels {
		if !b.state[name].read {
			out = append(out, name)
		}
	}
	return out
}

// Ready returns an error until some channel has had a good answer.
func (b *Board) Ready() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.everRead {
		return fmt.Errorf("%s notices not read yet: %v", b.source, slices.Clone(b.channels))
	}
	return nil
}

// Alive returns an error unless every channel heard from the cloud within
// limit; a channel never answered counts from the board's creation (Azure's
// first answer may take minutes, and restarting would only start it over).
func (b *Board) Alive(limit time.Duration) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, name := range b.channels {
		seen := b.state[name].contact
		if seen.IsZero() {
			if age := b.clk.Since(b.created); age > limit {
				return fmt.Errorf("no answer for %s since the start, %s ago", name, age.Round(time.Second))
			}
			continue
		}
		if age := b.clk.Since(seen); age > limit {
			return fmt.Errorf("no answer for %s in %s", name, age.Round(time.Second))
		}
	}
	return nil
}
