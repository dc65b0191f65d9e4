package client_test

import (
	"context"
	"fmt"
	"log"

	"github.com/hodei-io/hodei/client"
	hodeiv1 "github.com/hodei-io/hodei/proto/hodeiv1"
)

// A worker that sends e-mails: jobs of kind "email" carry the address as
// their payload. Run returns once its context is done and the running jobs
// are reported.
func ExampleWorker() {
	// A stand-in for a Hodei cluster (test only), with two jobs queued.
	addr, stop := client.FakeWorkerCluster(
		&hodeiv1.JobSpec{Kind: "email", Payload: []byte("ada@example.com")},
		&hodeiv1.JobSpec{Kind: "email", Payload: []byte("alan@example.com")},
	)
	defer stop()

	c, err := client.New(client.Config{Addrs: []string{addr}})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	w, err := client.NewWorker(c, client.WorkerConfig{ID: "mailer-1", Concurrency: 1})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sent := 0
	w.Handle("email", func(ctx context.Context, job *client.Job) error {
		if len(job.Payload()) == 0 {
			return client.NoRetry(fmt.Errorf("job %s: no address", job.ID()))
		}
		fmt.Printf("sending to %s (attempt %d)\n", job.Payload(), job.Attempt())
		job.SetOutput([]byte("250 OK"))
		if sent++; sent == 2 {
			cancel() // done for this example: drain and stop
		}
		return nil
	})
	if err := w.Run(ctx); err != nil {
		log.Fatal(err)
	}
	st := w.Stats()
	fmt.Printf("succeeded %d, failed %d\n", st.Succeeded, st.Failed)
	// Output:
	// sending to ada@example.com (attempt 1)
	// sending to alan@example.com (attempt 1)
	// succeeded 2, failed 0
}
