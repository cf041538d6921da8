"""The kernel side: tc netlink messages, the rtnetlink channel, the class dump, the
HTB backend, the nftables classifier, throwaway namespaces.
"""
