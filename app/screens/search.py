"""Search: a sentence finds videos, sounds, photos, depth maps and thermal frames."""

import streamlit as st

from lbsearch.app import controls, state, views

st.title("Search your media")
handle = state.current()
available = state.require_searchable(handle)

text = st.text_input("What are you looking for?", placeholder="a dog barking at night", key="search-text").strip()
options = controls.search_options("search", available, default=available)
if not options.modalities:
    st.info("Choose at least one modality to search in.")
elif text:
    views.results(controls.run_searches(handle, "search", options, text=text), "search", options.modalities)
