package proc

import (
	"errors"
	"strings"
	"testing"
)

// exitedWith starts a shell that prints out and exits 1, and returns the
// error Exited reports once it has gone.
func exitedWith(t *testing.T, out string) error {
	t.Helper()
	p, err := Start(t.TempDir(), "child", nil, "/bin/sh", "-c", "printf '%s\\n' \"$0\"; exit 1", out)
	if err != nil {
		t.Fatal(err)
	}
	<-p.Done()
	gone, err := p.Exited()
	if !gone || err == nil {
		t.Fatalf("Exited() = %v, %v after the child ended", gone, err)
	}
	return err
}

func TestAnExitQuotesTheLogAndNamesATakenPort(t *testing.T) {
	err := exitedWith(t, "listen tcp 127.0.0.1:40000: bind: address already in use")
	if !errors.Is(err, ErrPortTaken) || !strings.Contains(err.Error(), "bind: address already in use") {
		t.Errorf("exit after a taken port: %v", err)
	}
	err = exitedWith(t, "--config: no such file")
	if errors.Is(err, ErrPortTaken) || !strings.Contains(err.Error(), "--config: no such file") {
		t.Errorf("exit for another reason: %v", err)
	}
}

func TestRetryOnTakenPortTriesAgainOnlyForATakenPort(t *testing.T) {
	calls := 0
	_, err := RetryOnTakenPort(func() (int, error) { calls++; return 0, ErrPortTaken })
	if calls != 3 || !errors.Is(err, ErrPortTaken) {
		t.Errorf("a port taken every time: %d calls, %v; want 3 and the error", calls, err)
	}
	calls = 0
	v, err := RetryOnTakenPort(func() (int, error) {
		calls++
		if calls == 1 {
			return 0, ErrPortTaken
		}
		return 7, nil
	})
	if calls != 2 || v != 7 || err != nil {
		t.Errorf("taken once: %d calls, %d, %v; want 2, 7, nil", calls, v, err)
	}
	calls = 0
	other := errors.New("bad flag")
	if _, err := RetryOnTakenPort(func() (int, error) { calls++; return 0, other }); calls != 1 || err != other {
		t.Errorf("another failure: %d calls, %v; want 1 and it", calls, err)
	}
}
