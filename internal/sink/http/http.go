// Package http is the HTTP sink: it POSTs every batch to one endpoint
// (sink.http.url) as NDJSON or as a JSON array, one JSON object per record:
// the object the file sink writes as a line, the whole record or the
// configured columns.
//
// Write reads the answer's status as flow's error classes (see Sink.Write):
// the endpoint is unavailable or overloaded (transient, honouring
// Retry-After), or it refused the batch for a record in it (rejected; the
// lanes bisect the batch until the record is alone and dead-letter it with
// the status code). An answer that names failing records in its body is not
// read: there is no standard for it, and bisection finds them.
//
// Concurrency contract: Map and Write may be called from any number of
// goroutines at once. The sink holds at most Options.Lanes connections to the
// endpoint and keeps them alive between batches. Close may be called once the
// lanes have stopped writing; it is idempotent. Neither the URL's credentials,
// path and query nor a header value ever appears in an error or a log line.
package http

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"go.uber.org/zap"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/record"
	"github.com/sluicehq/sluice/internal/sink/jsonrec"
)

const (
	// maxRetryAfter bounds the Retry-After the sink reports: a server that
	// asks for more is taken to be wrong, not to mean a lane should wait for
	// days.
	maxRetryAfter = time.Hour
	// maxSnippet bounds the part of an error answer's body quoted in the
	// error (and so in the DLQ's sluice.error.message).
	maxSnippet = 512
	// maxDrain bounds how much of an answer's body is read so that its
	// connection can be reused; a longer body costs a new connection.
	maxDrain = 64 << 10
	// minSecretLen: header values shorter than this are not scrubbed from
	// errors (a "1" would mangle every message); they are not credentials.
	minSecretLen = 4
)

// Options are the settings and dependencies the sink takes from outside
// sink.http.
type Options struct {
	// Lanes is how many lanes may write at once (sink.concurrency): the
	// upper bound on connections to the endpoint, and how many are kept alive.
	// Zero means one.
	Lanes int
	// WriteTimeout bounds one request, from dialling to the end of the
	// answer's headers (sink.write_timeout). Zero means no bound beyond the
	// caller's ctx.
	WriteTimeout time.Duration
	// Columns, when set, maps each key of a record's object to a source, as
	// sink.file.columns does; empty sends the whole record.
	Columns map[string]string
	// Logger receives the sink's start-up line. Nil logs nothing.
	Logger *zap.Logger
	// DialContext replaces the TCP dialer (tests use an in-memory network).
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// Now is the clock an HTTP-date Retry-After is read against (default
	// time.Now).
	Now func() time.Time
}

// Sink POSTs batches of records to an HTTP endpoint. It implements
// flow.Mapper and flow.Sink. Create it with New.
type Sink struct {
	url          string // as configured, credentials included: only the request sees it
	endpoint     string // scheme://host, for errors and logs
	format       string
	header       nethttp.Header // sent with every request
	host         string         // a configured Host header, which Go takes from Request.Host
	columns      jsonrec.Columns
	client       *nethttp.Client
	transport    *nethttp.Transport
	writeTimeout time.Duration
	now          func() time.Time
	secrets      []string // longest first
}

// New checks cfg and opts and returns the sink. It does not connect: the
// first Write does. Every problem is reported with its configuration key, and
// without the URL or a header value, which may hold credentials.
func New(cfg config.HTTP, opts Options) (*Sink, error) {
	if cfg.URL == "" {
		return nil, errors.New("sink.http.url: no endpoint; set the URL that receives the batches")
	}
	u, err := url.Parse(cfg.URL)
	switch {
	case err != nil:
		return nil, errors.New("sink.http.url: not a valid URL (not shown, as it may hold credentials)")
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, errors.New("sink.http.url: must start with http:// or https://")
	case u.Host == "":
		return nil, errors.New("sink.http.url: has no host")
	}
	s := &Sink{url: cfg.URL, endpoint: u.Scheme + "://" + u.Host, format: cfg.Format,
		writeTimeout: opts.WriteTimeout, now: opts.Now}
	if s.now == nil {
		s.now = time.Now
	}
	switch s.format {
	case "":
		s.format = config.FormatNDJSON
	case config.FormatNDJSON, config.FormatJSON:
	default:
		return nil, fmt.Errorf("sink.http.format: %q is neither %s nor %s", cfg.Format, config.FormatNDJSON, config.FormatJSON)
	}
	if s.columns, err = jsonrec.Compile("sink.http.columns", opts.Columns); err != nil {
		return nil, err
	}

	s.header = nethttp.Header{}
	s.header.Set("User-Agent", "sluice")
	if s.format == config.FormatJSON {
		s.header.Set("Content-Type", "application/json")
	} else {
		s.header.Set("Content-Type", "application/x-ndjson")
	}
	names := make([]string, 0, len(cfg.Headers))
	for name, value := range cfg.Headers {
		if !validHeaderName(name) {
			return nil, fmt.Errorf("sink.http.headers: %q is not a header name", name)
		}
		v := value.Reveal()
		if strings.ContainsAny(v, "\r\n\x00") {
			return nil, fmt.Errorf("sink.http.headers.%s: the value holds a line break or NUL (not shown)", name)
		}
		if nethttp.CanonicalHeaderKey(name) == "Host" {
			s.host = v
		} else {
			s.header.Set(name, v)
		}
		names = append(names, name)
		s.addSecret(v)
		if _, token, ok := strings.Cut(v, " "); ok { // "Bearer <token>": the token alone, too
			s.addSecret(strings.TrimSpace(token))
		}
	}
	slices.Sort(names)
	s.addSecret(cfg.URL)
	if u.User != nil {
		s.addSecret(u.User.String())
		s.addSecret(u.User.Username())
		if pw, ok := u.User.Password(); ok {
			s.addSecret(pw)
			// What Go sends as Basic auth, should the endpoint echo it.
			s.addSecret(base64.StdEncoding.EncodeToString([]byte(u.User.Username() + ":" + pw)))
		}
	}
	if len(u.Path) > 1 { // a path can be a credential: a webhook's token
		s.addSecret(u.Path)
		s.addSecret(u.EscapedPath())
	}
	s.addSecret(u.RawQuery)
	s.addSecret(u.Fragment)
	slices.SortFunc(s.secrets, func(a, b string) int { return len(b) - len(a) })

	lanes := max(opts.Lanes, 1)
	dial := opts.DialContext
	if dial == nil {
		dial = (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	}
	s.transport = &nethttp.Transport{
		Proxy:               nethttp.ProxyFromEnvironment,
		DialContext:         dial,
		ForceAttemptHTTP2:   true,
		MaxConnsPerHost:     lanes,
		MaxIdleConnsPerHost: lanes,
		MaxIdleConns:        lanes,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 10 * time.Second,
	}
	s.client = &nethttp.Client{
		Transport: s.transport,
		// A redirect is not followed: 301 to 303 would turn the POST into a
		// GET and look like success. The 3xx answer is classified instead.
		CheckRedirect: func(*nethttp.Request, []*nethttp.Request) error { return nethttp.ErrUseLastResponse },
	}

	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	mode := "whole record"
	if s.columns != nil {
		mode = "columns"
	}
	log.Info("http sink ready",
		zap.String("endpoint", s.endpoint),
		zap.String("format", s.format),
		zap.String("mode", mode),
		zap.Strings("headers", names), // names only
		zap.Int("max_conns", lanes))
	return s, nil
}

// validHeaderName reports whether name is an HTTP field name: a token of
// RFC 9110's tchar, which is what net/http will send.
func validHeaderName(name string) bool {
	if name == "" {
		return false
	}
	for _, r := range name {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("!#$%&'*+-.^_`|~", r)
		if !ok {
			return false
		}
	}
	return true
}

func (s *Sink) addSecret(v string) {
	if len(v) >= minSecretLen && !slices.Contains(s.secrets, v) {
		s.secrets = append(s.secrets, v)
	}
}

// Close closes the idle connections to the endpoint. Call it after the last
// Write; it is idempotent.
func (s *Sink) Close() { s.transport.CloseIdleConnections() }

// Map encodes r as one JSON object and returns it as a Row of one element,
// the object as a []byte. The object is the one the file sink writes: without
// columns the whole record ({"topic", "partition", "offset", "timestamp",
// "key", "value", "headers"}, the value embedded as JSON when it is JSON),
// with columns one key per column in column-name order. A value.<path> column
// needs the value to be JSON: when it is not, Map returns a decode
// *flow.PoisonError. It does not block.
func (s *Sink) Map(ctx context.Context, r *record.Record) (record.Row, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	obj, err := jsonrec.Encode(s.columns, r)
	if err != nil {
		return nil, err
	}
	return record.Row{obj}, nil
}

// Write POSTs the batch in one request and reads the answer's status:
//
//   - 2xx: every record is written; nil.
//   - 429 and 503: the endpoint is overloaded or down: a *flow.TransientError
//     whose RetryAfter is the answer's Retry-After (delta-seconds or an
//     HTTP-date; at most an hour).
//   - 408, other 5xx, a network error or a timeout: a *flow.TransientError.
//   - 3xx (redirects are not followed), 401, 403, 407 (credentials), 404,
//     405, 415, 421, 426 (the URL or the format): the endpoint refuses any
//     request, whatever its records, so no record is to blame: a
//     *flow.TransientError, which feeds the breaker; nothing is dead-lettered
//     for a wrong token or URL.
//   - any other 4xx (400, 409, 413, 422, ...): the batch holds a record the
//     endpoint refuses: a *flow.RejectedError. For a batch of more than one
//     record its Rows is empty and the lanes bisect; for one record Rows is
//     [0] and Causes[0] a *flow.PoisonError of reason sink_rejected whose Code
//     is the status code and whose error is a *StatusError.
//
// A row that Map did not produce is a wiring bug: a *flow.FatalError. The
// answer's body is read (a bounded part) and closed, so its connection is
// reused.
func (s *Sink) Write(ctx context.Context, b *record.Batch) error {
	n := b.Len()
	if n == 0 {
		return nil
	}
	body, err := s.body(b)
	if err != nil {
		return err
	}
	if s.writeTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.writeTimeout)
		defer cancel()
	}
	req, err := nethttp.NewRequestWithContext(ctx, nethttp.MethodPost, s.url, bytes.NewReader(body))
	if err != nil {
		return &flow.FatalError{Err: s.scrub(fmt.Errorf("http sink: build the request to %s: %w", s.endpoint, err))}
	}
	req.Header = s.header.Clone()
	if s.host != "" {
		req.Host = s.host
	}
	resp, err := s.client.Do(req)
	if err != nil {
		// *url.Error quotes the whole URL: keep only its cause.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return &flow.TransientError{Err: s.scrub(fmt.Errorf("post %d record(s) to %s: %w", n, s.endpoint, err))}
	}
	defer drain(resp.Body)
	return s.classify(resp, n)
}

// body joins the batch's objects into a request body.
func (s *Sink) body(b *record.Batch) ([]byte, error) {
	size := len(b.Rows) + 2 // separators, and the brackets of a JSON array
	for i, row := range b.Rows {
		obj, ok := objectOf(row)
		if !ok {
			return nil, &flow.FatalError{Err: fmt.Errorf("http sink: row %d is not an object from the http sink's Map", i)}
		}
		size += len(obj)
	}
	buf := make([]byte, 0, size)
	if s.format == config.FormatJSON {
		buf = append(buf, '[')
		for i, row := range b.Rows {
			if i > 0 {
				buf = append(buf, ',')
			}
			buf = append(buf, row[0].([]byte)...)
		}
		return append(buf, ']'), nil
	}
	for _, row := range b.Rows {
		buf = append(buf, row[0].([]byte)...)
		buf = append(buf, '\n')
	}
	return buf, nil
}

func objectOf(row record.Row) ([]byte, bool) {
	if len(row) != 1 {
		return nil, false
	}
	obj, ok := row[0].([]byte)
	return obj, ok && len(obj) > 0 && bytes.IndexByte(obj, '\n') < 0
}

// StatusError is an answer of the endpoint other than 2xx. Its message has
// the status line and the start of the answer's body, with credentials
// scrubbed.
type StatusError struct {
	Code int
	msg  string
}

func (e *StatusError) Error() string { return e.msg }

// classify turns a non-2xx answer into the error of its class (see Write).
func (s *Sink) classify(resp *nethttp.Response, n int) error {
	code := resp.StatusCode
	if code >= 200 && code < 300 {
		return nil
	}
	serr := s.statusError(resp)
	switch {
	case code == nethttp.StatusTooManyRequests || code == nethttp.StatusServiceUnavailable:
		return &flow.TransientError{Err: serr, RetryAfter: retryAfter(resp.Header.Get("Retry-After"), s.now())}
	case code == nethttp.StatusRequestTimeout || code >= 500:
		return &flow.TransientError{Err: serr}
	case code >= 300 && code < 400:
		return &flow.TransientError{Err: fmt.Errorf("%w (redirects are not followed: sink.http.url must name the endpoint itself)", serr)}
	case refusesAnyRequest(code):
		return &flow.TransientError{Err: fmt.Errorf("%w (the endpoint refuses the request whatever its records: check sink.http.url and sink.http.headers)", serr)}
	case code >= 400 && code < 500:
		re := &flow.RejectedError{Err: serr}
		if n == 1 {
			re.Rows = []int{0}
			re.Causes = []*flow.PoisonError{{Reason: flow.ReasonSinkRejected, Code: strconv.Itoa(code), Err: serr}}
		}
		return re
	default: // 1xx as a final answer, or no status HTTP knows
		return &flow.TransientError{Err: serr}
	}
}

// refusesAnyRequest reports the 4xx statuses that are about the request's
// credentials, URL or format, never about a record in its body.
func refusesAnyRequest(code int) bool {
	switch code {
	case nethttp.StatusUnauthorized, nethttp.StatusForbidden, nethttp.StatusProxyAuthRequired,
		nethttp.StatusNotFound, nethttp.StatusMethodNotAllowed, nethttp.StatusUnsupportedMediaType,
		nethttp.StatusMisdirectedRequest, nethttp.StatusUpgradeRequired:
		return true
	}
	return false
}

// statusError reads the start of resp's body into a *StatusError.
func (s *Sink) statusError(resp *nethttp.Response) *StatusError {
	status := resp.Status
	if !strings.HasPrefix(status, strconv.Itoa(resp.StatusCode)) {
		status = strconv.Itoa(resp.StatusCode) + " " + status
	}
	msg := "HTTP " + strings.TrimSpace(status)
	head, _ := io.ReadAll(io.LimitReader(resp.Body, 4*maxSnippet))
	// Scrub before cutting, so that no part of a secret survives the cut.
	if snippet := snippetOf(s.scrubString(strings.ToValidUTF8(string(head), "\uFFFD"))); snippet != "" {
		msg += ": " + snippet
	}
	return &StatusError{Code: resp.StatusCode, msg: s.scrubString(msg)}
}

// snippetOf makes the start of a body fit for one line of an error: control
// characters and runs of white space as one space, at most maxSnippet bytes.
func snippetOf(body string) string {
	text := strings.Join(strings.FieldsFunc(body, func(r rune) bool {
		return unicode.IsSpace(r) || unicode.IsControl(r)
	}), " ")
	if len(text) <= maxSnippet {
		return text
	}
	cut := maxSnippet
	for cut > 0 && !utf8.RuneStart(text[cut]) {
		cut--
	}
	return text[:cut] + "…"
}

// retryAfter reads a Retry-After header, delta-seconds or an HTTP-date, as a
// duration from now; 0 when absent, unreadable or in the past.
func retryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if strings.Trim(v, "0123456789") == "" {
		secs, err := strconv.ParseInt(v, 10, 64)
		if err != nil || secs > int64(maxRetryAfter/time.Second) {
			return maxRetryAfter // only digits, and too many of them
		}
		return time.Duration(secs) * time.Second
	}
	at, err := nethttp.ParseTime(v)
	if err != nil {
		return 0
	}
	return min(max(at.Sub(now), 0), maxRetryAfter)
}

// drain reads what is left of a body, up to maxDrain, and closes it, so that
// the connection goes back to the pool.
func drain(body io.ReadCloser) {
	_, _ = io.CopyN(io.Discard, body, maxDrain)
	_ = body.Close()
}

// scrub keeps credentials out of an error's message; the error stays
// reachable through Unwrap, so errors.Is still finds context.Canceled.
func (s *Sink) scrub(err error) error {
	msg := err.Error()
	clean := s.scrubString(msg)
	if clean == msg {
		return err
	}
	return &scrubbedError{msg: clean, err: err}
}

func (s *Sink) scrubString(msg string) string {
	for _, secret := range s.secrets {
		msg = strings.ReplaceAll(msg, secret, "[redacted]")
	}
	return msg
}

type scrubbedError struct {
	msg string
	err error
}

func (e *scrubbedError) Error() string { return e.msg }
func (e *scrubbedError) Unwrap() error { return e.err }
