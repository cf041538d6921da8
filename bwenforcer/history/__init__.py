"""The usage history: hourly/daily/monthly buckets, the binary file, the journal
and the cycle's recorder.
"""
