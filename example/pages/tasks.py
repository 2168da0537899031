import time

from celery import shared_task


@shared_task
def add(x: int, y: int) -> int:
    return x + y


@shared_task
def slow_add(x: int, y: int, seconds: float) -> int:
    time.sleep(seconds)
    return x + y
