"""lbsearch's web UI: `streamlit run app/streamlit_app.py -- --index DIR` (or `$LBSEARCH_INDEX`, or `lbsearch ui`).

Pages: Search (text), Query by example (a file, uploaded or in the library), Library (models, adding folders,
counts, failures, index health). Everything they do goes through `lbsearch.library.Library`.
"""

import sys
from pathlib import Path

# Streamlit puts only this file's folder on sys.path; the pages import the `app` package from the repo root.
REPO = str(Path(__file__).resolve().parent.parent)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import streamlit as st  # noqa: E402

from app import state  # noqa: E402

st.set_page_config(page_title="lbsearch", page_icon=":material/search:", layout="wide")
page = st.navigation(
    [
        st.Page(state.SEARCH_PAGE, title="Search", icon=":material/search:", default=True),
        st.Page(state.EXAMPLE_PAGE, title="Query by example", icon=":material/image_search:", url_path="example"),
        st.Page(state.LIBRARY_PAGE, title="Library", icon=":material/video_library:", url_path="library"),
    ]
)
st.sidebar.caption(f"Library: `{state.index_location()}`")
page.run()
