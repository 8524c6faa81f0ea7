"""Paper-table studies as code: one sweep point runs the whole recipe (`recipe`), one command gathers a sweep into
its table and plot (`collect`); `proxy_encoder` pretrains the tiny encoder the CPU-scale Table 1 needs.
"""
