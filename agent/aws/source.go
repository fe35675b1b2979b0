// Package aws follows EC2's termination notices in the instance metadata
// service, IMDSv2 only: the Spot interruption (spot/instance-action), the
// rebalance recommendation and scheduled maintenance events, each path
// polled on its own (IMDS has no hanging GET).
//
// The client is the AWS SDK's feature/ec2/imds: it does the token flow
// (PUT for a session token, cached for its TTL, a new one on expiry or on a
// 401, with the request retried), and its Endpoint option is how tests point
// it at a stand-in. It runs with IMDSv1 fallback off (a refused token is an
// error, never a silent unauthenticated read) and on an HTTP client that
// never uses a proxy.
package aws

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"github.com/go-logr/logr"
	"k8s.io/utils/clock"

	"termgate.dev/termgate/agent/notice"
	"termgate.dev/termgate/nodemark"
)

// SourceName is EC2's name in marks and metrics.
const SourceName = "aws"

// Config tunes the source.
type Config struct {
	// Endpoint of IMDS, e.g. http://169.254.169.254; empty uses the SDK's
	// resolution ($AWS_EC2_METADATA_SERVICE_ENDPOINT, else the IPv4
	// link-local address).
	Endpoint string
	// PollInterval is the longest time between two reads of a path (each
	// wait is jittered below it).
	PollInterval time.Duration
	// ReadTimeout bounds one read, retries included.
	ReadTimeout time.Duration
}

// DefaultConfig returns the defaults behind the agent's flags.
func DefaultConfig() Config {
	return Config{PollInterval: time.Second, ReadTimeout: 2 * time.Second}
}

// Validate reports an unusable configuration.
func (c Config) Validate() error {
	var errs []error
	if c.PollInterval < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("EC2 metadata poll interval %s: want at least 100ms", c.PollInterval))
	}
	if c.ReadTimeout <= 0 {
		errs = append(errs, fmt.Errorf("EC2 metadata read timeout %s must be positive", c.ReadTimeout))
	}
	return errors.Join(errs...)
}

// Source is EC2's instance metadata as a notice.Source.
type Source struct {
	client   *imds.Client
	cfg      Config
	clk      clock.Clock
	metrics  *notice.Metrics
	board    *notice.Board
	trackers map[string]*notice.Tracker
}

var _ notice.Source = (*Source)(nil)

// maxBody bounds what one answer may hold; IMDS answers are small.
const maxBody = 64 << 10

// New builds the source on the SDK's IMDS client.
func New(clk clock.Clock, cfg Config, m *notice.Metrics) *Source {
	hc := &http.Client{Transport: m.Instrument(notice.DirectTransport()), Timeout: cfg.ReadTimeout}
	client := imds.New(imds.Options{
		Endpoint:       cfg.Endpoint,
		HTTPClient:     hc,
		EnableFallback: aws.FalseTernary,
		// Retries (a 401 is one: the token is renewed and the read sent
		// again) stay within the read timeout.
		DisableDefaultTimeout: true,
	})
	s := &Source{client: client, cfg: cfg, clk: clk, metrics: m, trackers: map[string]*notice.Tracker{}}
	s.board = notice.NewBoard(SourceName, Paths, channelOf, clk)
	for _, p := range Paths {
		s.trackers[p] = &notice.Tracker{}
	}
	return s
}

// Name implements notice.Source.
func (s *Source) Name() string { return SourceName }

// Run implements notice.Source: one poller per path, so a path that fails
// never delays another.
func (s *Source) Run(ctx context.Context, out chan<- notice.Reading) {
	done := make(chan struct{})
	for _, p := range Paths {
		go func() {
			defer func() { done <- struct{}{} }()
			notice.Poll(ctx, s.clk, s.cfg.PollInterval, func(ctx context.Context) time.Duration {
				s.read(ctx, p)
				return 0
			})
		}()
	}
	s.board.Publish(ctx, out)
	for range Paths {
		<-done
	}
}

// Alive implements notice.Source.
func (s *Source) Alive() error { return s.board.Alive(max(30*time.Second, 10*s.cfg.PollInterval)) }

// Ready implements notice.Source.
func (s *Source) Ready() error { return s.board.Ready() }

// read polls one path and records what it holds. 404 means no notice.
func (s *Source) read(ctx context.Context, path string) {
	log := logr.FromContextOrDiscard(ctx).WithValues("path", path)
	ctx, cancel := context.WithTimeout(ctx, s.cfg.ReadTimeout)
	defer cancel()
	body, err := s.get(ctx, path)
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		return
	}
	var notFound bool
	if err != nil {
		var re *smithyhttp.ResponseError
		notFound = errors.As(err, &re) && re.HTTPStatusCode() == http.StatusNotFound
		if !notFound {
			s.metrics.Errors.WithLabelValues(path).Inc()
			log.Info("EC2 metadata read failed; polling on", "error", err.Error())
			return
		}
	}
	at := s.clk.Now()
	var notices []notice.Notice
	var bad []notice.Unreadable
	understood := true
	if !notFound {
		notices, bad, err = parse(path, body)
		if err != nil {
			understood = false
			bad = append(bad, notice.Unreadable{Channel: path, Value: compact(body), Err: err.Error(), Alarming: path != PathRebalance})
		}
	}
	if len(bad) > 0 {
		s.metrics.Invalid.WithLabelValues(path).Inc()
		log.Error(errors.New(bad[0].Err), "ignoring EC2 metadata value; the other notices still count", "value", bad[0].Value)
	}
	if understood {
		notices = s.trackers[path].Stamp(at, notices)
	}
	s.board.Set(path, notices, bad, understood)
}

func (s *Source) get(ctx context.Context, path string) (string, error) {
	out, err := s.client.GetMetadata(ctx, &imds.GetMetadataInput{Path: path})
	if err != nil {
		return "", err
	}
	defer out.Content.Close()
	b, err := io.ReadAll(io.LimitReader(out.Content, maxBody))
	if err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	return string(b), nil
}

func parse(path, body string) ([]notice.Notice, []notice.Unreadable, error) {
	switch path {
	case PathInstanceAction:
		n, err := ParseInstanceAction(body)
		if err != nil {
			return nil, nil, err
		}
		return []notice.Notice{n}, nil, nil
	case PathRebalance:
		n, err := ParseRebalance(body)
		if err != nil {
			return nil, nil, err
		}
		return []notice.Notice{n}, nil, nil
	default:
		return ParseScheduled(body)
	}
}

// channelOf is the path a mark's notice comes from: its id for the Spot
// and rebalance notices, the scheduled events for any other id; by reason
// for marks without an id.
func channelOf(m nodemark.Mark) string {
	switch {
	case m.NoticeID == PathInstanceAction, m.NoticeID == "" && m.Reason == nodemark.ReasonPreempted:
		return PathInstanceAction
	case m.NoticeID == PathRebalance, m.NoticeID == "" && m.Reason == nodemark.ReasonRebalanceRecommended:
		return PathRebalance
	case m.NoticeID != "", m.Reason == nodemark.ReasonUpcomingMaintenance:
		return PathScheduled
	}
	return ""
}
