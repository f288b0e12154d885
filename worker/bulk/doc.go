// Package bulk is bulk mode: partial updates of distinct conversations go to Kustomer in bulk
// jobs, up to 100 updates for one unit of the org budget.
//
// The Bulker takes a conversation's head update when the host (the worker pool) would send it
// as a single PUT (Take): from then on the conversation is in the bulker's hands, so its next
// update waits until this one is settled, as with a single PUT. Items gather into the next
// job; a job goes out when it is full, or after Linger with at least Min items; with fewer,
// they go back to the host as single PUTs. Each job has a goroutine of its own that stores it
// in the bulk bucket (Store), submits it through the host's gates and budget (Host.Request),
// reads its batches the same way (class pacer.BulkRead) at times learned from the jobs before,
// and settles each item once its outcome is known: a succeeded item goes back as applied
// (Host.Applied), acknowledged like an applied single PUT; a failed one goes back as a single
// PUT (Host.Single) whose answer decides as for any other. What cannot go in bulk (a refused
// submit, a job past its deadline, reads the key may not make) goes as single PUTs too.
//
// Order: a job that Kustomer may still apply after its items were re-sent (a submit without
// an answer, a job past its deadline or unreadable) fences its conversations: their newer
// updates wait until the job is complete or known lost (its deadline, or twice it, passed).
// Fences and jobs live in the bucket, so that a process started after a crash settles a
// redelivered item by its job's result instead of sending it again.
//
// Handover (handover.go): when this replica becomes a standby on a lane, what the bulker
// holds of that lane goes back to the active replica at once (Host.Standby, Yield): items
// held back by a fence, items gathering, jobs not submitted (never submitted now), and the
// items of submitted jobs, which it stops following. A replica active on some lane
// (Host.Active) follows every job in the bucket that another one submitted and nobody
// finished, holding its conversations' newer updates until the job is complete or known lost.
//
// The bulker reaches the host only through Host, with the Items the host gave it; it calls
// the host without holding a lock of its own.
package bulk
