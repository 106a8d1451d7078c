// Command kafkawait waits until a Kafka cluster answers a metadata request
// that lists at least one broker, or until a deadline passes.
//
// test/env/up.sh uses it to tell when the test broker it started is ready and
// whether a broker it started earlier still answers. It exits 0 when the
// cluster is ready, 1 when the deadline passed first and 2 on bad usage.
//
//	kafkawait -brokers 127.0.0.1:19092 -timeout 90s
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("kafkawait", flag.ContinueOnError)
	fs.SetOutput(stderr)
	brokers := fs.String("brokers", "127.0.0.1:19092", "comma-separated seed brokers")
	timeout := fs.Duration("timeout", 90*time.Second, "give up after this long")
	attempt := fs.Duration("attempt", 2*time.Second, "deadline of one metadata request")
	quiet := fs.Bool("q", false, "print nothing on success")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	seeds := strings.Split(*brokers, ",")

	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	start := time.Now()
	n, err := waitReady(ctx, seeds, *attempt)
	if err != nil {
		fmt.Fprintf(stderr, "kafkawait: %s not ready after %s: %v\n", *brokers, time.Since(start).Round(time.Millisecond), err)
		return 1
	}
	if !*quiet {
		fmt.Fprintf(stdout, "kafkawait: %s ready (%d broker(s)) after %s\n", *brokers, n, time.Since(start).Round(time.Millisecond))
	}
	return 0
}

// waitReady asks for cluster metadata until a request succeeds with at least
// one broker listed or ctx ends. It returns the number of brokers listed.
func waitReady(ctx context.Context, seeds []string, attempt time.Duration) (int, error) {
	var last error
	for {
		n, err := probe(ctx, seeds, attempt)
		if err == nil {
			return n, nil
		}
		last = err
		select {
		case <-ctx.Done():
			return 0, errors.Join(ctx.Err(), last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// probe makes one metadata request with a fresh client, so that a broker that
// restarted on the same address is seen as it is now.
func probe(ctx context.Context, seeds []string, attempt time.Duration) (int, error) {
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(seeds...),
		kgo.DialTimeout(attempt),
		kgo.RequestRetries(0),
		kgo.RetryTimeout(attempt),
	)
	if err != nil {
		return 0, fmt.Errorf("new client: %w", err)
	}
	defer cl.Close()

	ctx, cancel := context.WithTimeout(ctx, attempt)
	defer cancel()
	md, err := kadm.NewClient(cl).BrokerMetadata(ctx)
	if err != nil {
		return 0, fmt.Errorf("metadata: %w", err)
	}
	if len(md.Brokers) == 0 {
		return 0, errors.New("metadata lists no broker yet")
	}
	return len(md.Brokers), nil
}
