from klerk_django import job

@job
def ping(n):
    if n == 2:
        raise ValueError("two is bad")
    return n * 2
