"""Secure remote execution (`veil remote`, docs/remote.md): encrypted code and input go to
an untrusted host over SSH, run there attested, and only the submitter reads the output."""
