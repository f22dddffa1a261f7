"""Pipeline stages: templatize, index, match, instantiate, judge, filter."""
