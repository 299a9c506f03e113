package main

import (
	"errors"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Flag values are checked when the flag is parsed, and a refused one is reported as
// `--NAME VALUE: want ...`, in the user's terms: pflag's own number flags would answer with
// strconv's text (`strconv.ParseUint: parsing "-5": invalid syntax`).

// number is what numberFlag holds: every number flag of the CLI is a count, a size or an
// identifier, none negative.
type number interface{ ~int | ~int64 | ~uint32 }

// numberFlag is a whole-number flag that refuses anything outside min..max when parsed, saying
// what it wants. It reads numbers as pflag's number flags do (base prefixes 0x, 0o, 0b and
// underscores allowed), but no sign.
type numberFlag[T number] struct {
	p        *T
	min, max uint64
	want     string // what the flag wants, after "want ": "a VNI, 1-16777214"
}

// newNumber binds a numberFlag to p, whose value is the default, and defines it in fs.
func newNumber[T number](fs *pflag.FlagSet, p *T, name string, min, max uint64, want, usage string) {
	fs.Var(&numberFlag[T]{p: p, min: min, max: max, want: want}, name, usage)
}

func (f *numberFlag[T]) Set(s string) error {
	v, err := strconv.ParseUint(s, 0, 64)
	if err != nil || v < f.min || v > f.max {
		return errors.New("want " + f.want)
	}
	*f.p = T(v)
	return nil
}

func (f *numberFlag[T]) String() string { return strconv.FormatUint(uint64(*f.p), 10) }
func (f *numberFlag[T]) Type() string   { return "int" }

// maxInt is the largest value an int flag holds, as an upper bound of numberFlag.
const maxInt = uint64(math.MaxInt)

// positiveDuration is a duration flag that refuses zero and negative values when parsed: a call
// with no time left would only fail later, with DeadlineExceeded, and a gossip timer of zero would
// quietly fall back to its default.
type positiveDuration time.Duration

func (d *positiveDuration) Set(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil {
		return errors.New("want a duration such as 500ms, 15s or 1m")
	}
	if v <= 0 {
		return errors.New("want a positive duration such as 500ms, 15s or 1m")
	}
	*d = positiveDuration(v)
	return nil
}

func (d *positiveDuration) String() string { return time.Duration(*d).String() }
func (d *positiveDuration) Type() string   { return "duration" }

// flagError is the root command's FlagErrorFunc: a flag given a value it refuses is reported as
// `--NAME VALUE: want ...`. The flags of this package say what they want themselves; pflag's own
// number, duration and bool flags (some are defined outside cmd/, such as the server's
// --max-request-bytes) get the same treatment here instead of strconv's or time's text.
func flagError(_ *cobra.Command, err error) error {
	var inv *pflag.InvalidValueError
	if !errors.As(err, &inv) {
		return err
	}
	f := inv.GetFlag()
	cause := inv.Unwrap()
	var num *strconv.NumError
	switch {
	case errors.As(cause, &num) && num.Func == "ParseBool":
		cause = errors.New("want true or false")
	case errors.As(cause, &num) && errors.Is(num.Err, strconv.ErrRange):
		cause = errors.New("want a whole number, and a smaller one")
	case errors.As(cause, &num):
		cause = errors.New("want a whole number")
	case f.Value.Type() == "duration" && strings.HasPrefix(cause.Error(), "time: "):
		cause = errors.New("want a duration such as 500ms, 15s or 1m")
	}
	return fmt.Errorf("--%s %s: %w", f.Name, flagValue(inv.GetValue()), cause)
}

// bareValue is a value shown as typed in a message: a number, a duration, a range such as 5-1 or an
// address. Anything else is quoted, so that where it starts and ends is plain.
var bareValue = regexp.MustCompile(`^[-+]?[0-9][0-9A-Za-z._:+-]*$`)

// flagValue shows a value a flag was given, in a message.
func flagValue(s string) string {
	if bareValue.MatchString(s) {
		return s
	}
	return strconv.Quote(s)
}
