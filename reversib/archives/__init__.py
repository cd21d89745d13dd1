"""Archives and encrypted exports: verify inside them without extracting (docs/archives.md).

* `options.py` -- the `archive:` block of a check;
* `detect.py` -- encryption, compression and container recognized from the bytes;
* `decrypt.py` -- `age` / `gpg` as a streamed layer, and what their failures mean;
* `pipeline.py` -- read, decrypt, decompress on their own threads and processes;
* `scan.py` -- one pass over the members: names, links, limits, digests;
* `source.py` -- the archive as a source in its own right;
* `check.py` -- what the runner calls: inner and outer manifests in one read.
"""
