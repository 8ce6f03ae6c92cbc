from django.contrib import admin

from .models import Customer, Order, Receipt


@admin.register(Customer)
class CustomerAdmin(admin.ModelAdmin):
    list_display = ["name", "email"]
    search_fields = ["name", "email"]


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ["id", "customer", "amount", "status", "created_at"]
    list_filter = ["status"]
    search_fields = ["customer__name"]


@admin.register(Receipt)
class ReceiptAdmin(admin.ModelAdmin):
    list_display = ["order", "sent_to", "created_at"]
