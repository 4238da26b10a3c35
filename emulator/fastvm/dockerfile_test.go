//go:build linux

package fastvm

import (
	"reflect"
	"testing"
)

func TestParseDockerfile(t *testing.T) {
	df, err := parseDockerfile("# syntax=docker/dockerfile:1\n\nfrom alpine AS base\r\nRUN apt-get update && \\\n  # a comment inside\n  apt-get install -y curl\nENV A=1\n  \nCMD [\"sh\"]\nRUN echo unterminated \\")
	if err != nil {
		t.Fatal(err)
	}
	want := []instruction{
		{"FROM", "alpine AS base", 3},
		{"RUN", "apt-get update &&  apt-get install -y curl", 4},
		{"ENV", "A=1", 7},
		{"CMD", `["sh"]`, 9},
		{"RUN", "echo unterminated", 10},
	}
	if !reflect.DeepEqual(df, want) {
		t.Fatalf("parsed:\n%+v\nwant:\n%+v", df, want)
	}
	if got := firstFromImage("ARG V=1\nFROM --platform=linux/amd64 python:3.13-slim AS b\nFROM x"); got != "python:3.13-slim" {
		t.Fatalf("first FROM image %q", got)
	}
	if got := firstFromImage("RUN true"); got != "" {
		t.Fatalf("no FROM: %q", got)
	}
}

func TestDockerfileSubstitutionAndEnv(t *testing.T) {
	st := &buildState{env: map[string]string{"HOME_DIR": "/srv"}, args: map[string]string{"V": "1.2", "EMPTY": ""}}
	for in, want := range map[string]string{
		"$HOME_DIR/app":        "/srv/app",
		"${HOME_DIR}x":         "/srvx",
		"v${V}-${EMPTY:-dflt}": "v1.2-dflt",
		"${V:+set}${NOPE:+x}":  "set",
		`cost \$5 $`:           "cost $5 $",
		"$NOPE/x":              "/x",
	} {
		if got := st.expand(in); got != want {
			t.Errorf("expand(%q) = %q, want %q", in, got, want)
		}
	}
	if err := st.applyEnv(`A="two words" B=plain\ esc C='$HOME_DIR' D="$HOME_DIR x" E=\$HOME_DIR`); err != nil {
		t.Fatal(err)
	}
	if err := st.applyEnv(`LEGACY the rest is "the value"`); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"HOME_DIR": "/srv", "A": "two words", "B": "plain esc", "C": "$HOME_DIR", "D": "/srv x", "E": "$HOME_DIR", "LEGACY": `the rest is "the value"`}
	if !reflect.DeepEqual(st.env, want) {
		t.Fatalf("env %q\nwant %q", st.env, want)
	}
	if env := st.runEnv(); env["V"] != "1.2" || env["A"] != "two words" {
		t.Fatalf("run env %q", env)
	}
	if err := st.applyEnv(`=x`); err == nil {
		t.Fatal("ENV =x accepted")
	}
}
