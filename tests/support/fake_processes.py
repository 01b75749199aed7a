"""Processes of a job, faked without a framework: threads stand in for the processes
(broadcast and gather through a barrier, as JAX's collectives and TensorFlow's
coordination service do), and fake framework arrays expose their addressable pieces as
JAX's do (``index``, ``replica_id``, ``data``)."""

import threading

class Hub:
    def __init__(self, n):
        self.barrier = threading.Barrier(n, timeout=30)
        self.value, self.rows = None, [None] * n


class Procs:
    def __init__(self, hub, index, count):
        self.hub, self.index, self.count = hub, index, count

    def broadcast(self, text):
        if self.index == 0:
            self.hub.value = text
        self.hub.barrier.wait()
        out = self.hub.value
        self.hub.barrier.wait()
        return out

    def gather(self, text):
        self.hub.rows[self.index] = text
        self.hub.barrier.wait()
        out = list(self.hub.rows)
        self.hub.barrier.wait()
        return out


class Shard:
    def __init__(self, index, replica_id, data):
        self.index, self.replica_id = index, replica_id
        self.__dict__["data"] = data


class Arr:
    is_fully_addressable = False

    def __init__(self, shards):
        self.addressable_shards = shards


class Handle:
    def __init__(self, value):
        self.value = value


def run_processes(n, body, timeout=60):
    """Run ``body(p, procs)`` in ``n`` threads, one per fake process; return what each
    returned or raised (an exception is returned, not raised)."""
    hub, out = Hub(n), [None] * n

    def worker(p):
        try:
            out[p] = body(p, Procs(hub, p, n))
        except Exception as e:  # noqa: BLE001 - returned for the assertions
            out[p] = e
    threads = [threading.Thread(target=worker, args=(p,)) for p in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a fake process never finished"
    return out
