"""Storage, the second stage: the metadata database (files, items, segments, models, vectors) and the FAISS
indexes kept in step with it (`vectorindex` is one index file, `store` keeps every index in step)."""
