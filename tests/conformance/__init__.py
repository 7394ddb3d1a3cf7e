"""A differential POSIX conformance suite: the same operations on a plain directory (the
oracle), a gocryptfs mount (the peer) and a veil mount; veil must give the plain
directory's results. Written after what pjdfstest's groups test (read with `fetch`), not
copied from it."""
