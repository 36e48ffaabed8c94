"""The Streamlit UI of lbsearch: presentation only; every search, ingest and health check goes through
`lbsearch.library.Library`."""
