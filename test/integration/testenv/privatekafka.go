package testenv

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Variables that point NewPrivateKafka at its parts; by default it finds the
// jars that test/env/up.sh resolves (test/kafka/lib of this checkout) and the
// newest Java on the machine.
const (
	EnvKafkaLib = "SLUICE_TEST_KAFKA_LIB" // the folder of the Kafka jars
	EnvJava     = "SLUICE_TEST_JAVA"      // a java binary, 17 or newer
)

// kafkaStartTimeout bounds a start of the private broker: a JVM start and,
// after a restart, the recovery of its logs.
const kafkaStartTimeout = 90 * time.Second

// PrivateKafka is a Kafka broker of one test's own, for tests that stop and
// start the broker without disturbing the shared broker that other tests use
// in parallel. It runs the jars of the test environment (test/kafka/lib) as
// one combined broker+controller node in KRaft mode, listens on two free ports
// of 127.0.0.1 only, keeps its data in a temporary folder that survives Stop
// and Start, and is killed and removed when the test ends.
//
// Its methods end the test with t.Fatal, so call them from the test's own
// goroutine.
type PrivateKafka struct {
	t      testing.TB
	java   string
	lib    string
	log4j  string
	dir    string
	props  string
	logf   string
	cmd    *exec.Cmd
	exited chan struct{}

	// Port and ControllerPort are the PLAINTEXT and CONTROLLER ports.
	Port, ControllerPort int
	// Brokers is the seed broker list, "127.0.0.1:<Port>".
	Brokers []string
}

// NewPrivateKafka formats the storage of a new single-node cluster and starts
// the broker. It skips the test (or fails it under CI) when Java or the Kafka
// jars are missing: test/env/up.sh installs both.
func NewPrivateKafka(t testing.TB) *PrivateKafka {
	t.Helper()
	return newPrivateKafka(t, nil)
}

// kafkaVariant adapts a private broker before its storage is formatted (see
// securekafka.go). It runs once the folder and the two ports are set; it
// returns properties appended to server.properties, where a key given again
// replaces the first one (java.util.Properties keeps the last), and extra
// arguments of kafka.tools.StorageTool format.
type kafkaVariant func(k *PrivateKafka) (props string, formatArgs []string)

func newPrivateKafka(t testing.TB, variant kafkaVariant) *PrivateKafka {
	t.Helper()
	lib, err := findKafkaLib()
	if err == nil && lib == "" {
		err = errors.New("no Kafka jars: run test/env/up.sh (make env-up), or set " + EnvKafkaLib)
	}
	java := ""
	if err == nil {
		java, err = findJava()
	}
	if err != nil {
		if InCI() {
			t.Fatal(err)
		}
		t.Skip(err.Error())
	}
	dir, err := os.MkdirTemp("", "sluice-private-kafka-")
	if err != nil {
		t.Fatal(err)
	}
	k := &PrivateKafka{
		t: t, java: java, lib: lib, dir: dir,
		props: filepath.Join(dir, "server.properties"),
		logf:  filepath.Join(dir, "kafka.log"),
	}
	if l := filepath.Join(filepath.Dir(lib), "log4j2.properties"); fileExists(l) {
		k.log4j = l
	}
	t.Cleanup(func() {
		k.kill()
		if t.Failed() {
			t.Logf("private Kafka log (last lines):\n%s", tail(k.logf, 40))
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove %s: %v", dir, err)
		}
	})

	k.Port, k.ControllerPort = freePort(t), freePort(t)
	for k.ControllerPort == k.Port {
		k.ControllerPort = freePort(t)
	}
	k.Brokers = []string{fmt.Sprintf("127.0.0.1:%d", k.Port)}
	props, formatArgs := k.properties(), []string(nil)
	if variant != nil {
		extra, args := variant(k)
		props, formatArgs = props+extra, args
	}
	if err := os.WriteFile(k.props, []byte(props), 0o600); err != nil {
		t.Fatal(err)
	}
	// The cluster id is 16 random bytes in URL-safe base64, as
	// kafka.tools.StorageTool random-uuid prints it (never starting with '-'),
	// made here to spare a JVM start.
	id := ""
	for id == "" || id[0] == '-' {
		var b [16]byte
		if _, err := rand.Read(b[:]); err != nil {
			t.Fatal(err)
		}
		id = base64.RawURLEncoding.EncodeToString(b[:])
	}
	format := exec.Command(k.java, append(append(k.jvmOpts(), "kafka.tools.StorageTool", "format",
		"--config", k.props, "--cluster-id", id, "--ignore-formatted"), formatArgs...)...)
	if out, err := k.runLogged(format, 60*time.Second); err != nil {
		t.Fatalf("format the private Kafka's storage: %v\n%s", err, out)
	}
	k.Start()
	return k
}

// properties is the broker's configuration, as test/env/up.sh writes it for
// the shared broker, on this broker's ports and folder.
func (k *PrivateKafka) properties() string {
	return fmt.Sprintf(`# PrivateKafka: one combined node in KRaft mode, 127.0.0.1 only, for one test.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:%[2]d
listeners=PLAINTEXT://127.0.0.1:%[1]d,CONTROLLER://127.0.0.1:%[2]d
advertised.listeners=PLAINTEXT://127.0.0.1:%[1]d
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=%[3]s
num.partitions=6
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
delete.topic.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=6
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
log.cleaner.dedupe.buffer.size=16777216
`, k.Port, k.ControllerPort, filepath.Join(k.dir, "data"))
}

func (k *PrivateKafka) jvmOpts() []string {
	opts := []string{
		"-Xms256m", "-Xmx512m",
		"-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:+ExitOnOutOfMemoryError",
		"-Djava.awt.headless=true", "-Djava.net.preferIPv4Stack=true",
		"-Dkafka.logs.dir=" + k.dir,
		"-cp", filepath.Join(k.lib, "*"),
	}
	if k.log4j != "" {
		opts = append(opts, "-Dlog4j2.configurationFile="+k.log4j)
	}
	return opts
}

// Start starts the broker (again, after Stop or Kill) on the same ports and
// data, and waits until it answers metadata requests.
func (k *PrivateKafka) Start() {
	k.t.Helper()
	if k.Running() {
		k.t.Fatal("private Kafka: Start while it runs")
	}
	logFile, err := os.OpenFile(k.logf, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		k.t.Fatal(err)
	}
	fmt.Fprintf(logFile, "\n===== %s PrivateKafka starts the broker =====\n", time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(k.java, append(k.jvmOpts(), "kafka.Kafka", k.props)...)
	cmd.Dir = k.dir
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Its own process group: a Ctrl-C of the test run does not reach it
	// before the test's clean-up does.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		k.t.Fatalf("start the private Kafka: %v", err)
	}
	logFile.Close() // the child has its own descriptor
	k.cmd, k.exited = cmd, make(chan struct{})
	exited := k.exited
	go func() { _ = cmd.Wait(); close(exited) }()

	ctx, cancel := context.WithTimeout(context.Background(), kafkaStartTimeout)
	defer cancel()
	var last error
	for {
		if last = probeKafka(ctx, k.Brokers); last == nil {
			return
		}
		select {
		case <-exited:
			k.t.Fatalf("the private Kafka exited during start-up (%v); log:\n%s", cmd.ProcessState, tail(k.logf, 40))
		case <-ctx.Done():
			k.t.Fatalf("the private Kafka does not answer on %s after %v: %v; log:\n%s", k.Brokers[0], kafkaStartTimeout, last, tail(k.logf, 40))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// Stop stops the broker as an operator would (SIGTERM: a controlled
// shutdown) and waits until it has exited; it kills it after a minute.
func (k *PrivateKafka) Stop() {
	k.t.Helper()
	if !k.Running() {
		k.t.Fatal("private Kafka: Stop while it is not running")
	}
	_ = k.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-k.exited:
	case <-time.After(time.Minute):
		k.kill()
		k.t.Fatalf("the private Kafka did not stop within a minute of SIGTERM: killed; log:\n%s", tail(k.logf, 40))
	}
}

// Kill kills the broker with SIGKILL and waits until it is gone.
func (k *PrivateKafka) Kill() {
	k.t.Helper()
	if !k.Running() {
		k.t.Fatal("private Kafka: Kill while it is not running")
	}
	k.kill()
}

func (k *PrivateKafka) kill() {
	if k.cmd == nil {
		return
	}
	// The JVM is the leader of its process group; nothing else is in it.
	_ = syscall.Kill(-k.cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-k.exited:
	case <-time.After(30 * time.Second):
	}
}

// Running reports whether the broker process runs.
func (k *PrivateKafka) Running() bool {
	if k.cmd == nil {
		return false
	}
	select {
	case <-k.exited:
		return false
	default:
		return true
	}
}

// PID is the broker's process id, 0 when it does not run.
func (k *PrivateKafka) PID() int {
	if !k.Running() {
		return 0
	}
	return k.cmd.Process.Pid
}

// runLogged runs cmd with its output appended to the broker's log, and
// returns the end of the log when it fails.
func (k *PrivateKafka) runLogged(cmd *exec.Cmd, timeout time.Duration) (string, error) {
	f, err := os.OpenFile(k.logf, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return "", err
	}
	defer f.Close()
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Dir = k.dir
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		return "", err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		err = fmt.Errorf("no exit after %v: %w", timeout, <-done)
	}
	if err != nil {
		return tail(k.logf, 30), err
	}
	return "", nil
}

// probeKafka asks the brokers for their metadata once, within a few seconds.
func probeKafka(ctx context.Context, seeds []string) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.DialTimeout(2*time.Second),
		kgo.RequestRetries(0), kgo.RetryTimeout(2*time.Second))
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	md, err := kadm.NewClient(cl).BrokerMetadata(ctx)
	if err != nil {
		return err
	}
	if len(md.Brokers) == 0 {
		return errors.New("metadata lists no broker yet")
	}
	return nil
}

// findKafkaLib returns the folder of the Kafka jars: $SLUICE_TEST_KAFKA_LIB,
// or test/kafka/lib of the checkout the test runs in ("" when neither has a
// kafka_2.13 jar).
func findKafkaLib() (string, error) {
	if d := os.Getenv(EnvKafkaLib); d != "" {
		if !hasKafkaJar(d) {
			return "", fmt.Errorf("%s=%s holds no kafka_2.13-*.jar", EnvKafkaLib, d)
		}
		return d, nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := wd; ; d = filepath.Dir(d) {
		if lib := filepath.Join(d, "test", "kafka", "lib"); hasKafkaJar(lib) {
			return lib, nil
		}
		if fileExists(filepath.Join(d, "go.mod")) || filepath.Dir(d) == d {
			return "", nil
		}
	}
}

func hasKafkaJar(dir string) bool {
	m, _ := filepath.Glob(filepath.Join(dir, "kafka_2.13-*.jar"))
	return len(m) > 0
}

// findJava returns $SLUICE_TEST_JAVA, $JAVA_HOME/bin/java, java on PATH or
// the newest /usr/lib/jvm/*/bin/java.
func findJava() (string, error) {
	if j := os.Getenv(EnvJava); j != "" {
		return j, nil
	}
	if h := os.Getenv("JAVA_HOME"); h != "" && fileExists(filepath.Join(h, "bin", "java")) {
		return filepath.Join(h, "bin", "java"), nil
	}
	if j, err := exec.LookPath("java"); err == nil {
		return j, nil
	}
	m, _ := filepath.Glob("/usr/lib/jvm/*/bin/java")
	if len(m) > 0 {
		return m[len(m)-1], nil
	}
	return "", errors.New("no java found (set " + EnvJava + " or JAVA_HOME, or run test/env/up.sh, which installs Java 17)")
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// tail returns the last n lines of the file at path.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
