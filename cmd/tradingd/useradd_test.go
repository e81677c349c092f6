package main

import (
	"io"
	"testing"
	"time"
)

// TestReadPasswordOpenPipe: standard input that stays open after the password's line
// (kubectl exec -i without -t, the user typing the line) is answered at once, as before:
// reading on to the end of it waited for an end that never came.
func TestReadPasswordOpenPipe(t *testing.T) {
	r, w := io.Pipe()
	defer w.Close()
	go w.Write([]byte("s3cret-pw\n"))
	type result struct {
		password string
		err      error
	}
	done := make(chan result, 1)
	go func() {
		p, err := readPassword(r)
		done <- result{p, err}
	}()
	select {
	case got := <-done:
		if got.err != nil || got.password != "s3cret-pw" {
			t.Errorf("readPassword = %q, %v", got.password, got.err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("readPassword still waits 2s after the first line arrived on an open pipe")
	}
}
