package workflow

import (
	"context"
	"errors"
	"time"

	"github.com/inboxd/inboxd/daemon/storage/sqldb"
)

// The writes that record a run's progress (a step's start and end, the
// run's end) are retried while the database is unreachable — a PostgreSQL
// restart or failover, a cut connection — instead of being given up at the
// first error: a step whose end could not be recorded would run again when
// the run resumes after its lease, repeating its side effects (a second
// draft, a second model call).
const (
	writeRetryFirst = 100 * time.Millisecond
	writeRetryMax   = 2 * time.Second
)

// retryWrite runs write until it succeeds, fails with an error other than
// the database being unreachable (sqldb.Unreachable), or ctx (the write's
// bound, see writeCtx) or parent (the runner's context: a shutdown) ends;
// it returns write's last error. A retry that fails with errStepState found
// the step already past the state the write moves it from: an earlier
// attempt committed and only its answer was lost, so that is success (the
// claim, checked first, is still ours).
func retryWrite(ctx, parent context.Context, write func() error) error {
	wait := writeRetryFirst
	for attempt := 0; ; attempt++ {
		err := write()
		switch {
		case err == nil:
			return nil
		case attempt > 0 && errors.Is(err, errStepState):
			return nil
		case !sqldb.Unreachable(err):
			return err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-parent.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		wait = min(2*wait, writeRetryMax)
	}
}
